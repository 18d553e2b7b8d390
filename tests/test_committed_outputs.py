"""The committed results tell the truth: every git-tracked output of `dvc.yaml` and
`study/dvc.yaml` (metrics, plots, reports: `cache: false` outs kept in git) has the hash its lock
file records, so `dvc status` at HEAD reports nothing and the lock and the files cannot drift.

DVC's own loader resolves each stage's outs (`${...}` paths, `wdir`) with the lock's hashes, and
`Output.get_hash` hashes the file as `dvc status` does: in DVC 3 (`hash: md5` in the lock) the
plain md5 of the bytes, text or not (dvc_data.hashfile.hash: only the legacy `md5-dos2unix`
entries normalise line ends). Cheap: no data, no training.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DVCFILES = ("dvc.yaml", "study/dvc.yaml")


def _git_tracked(root: Path) -> set[str]:
    done = subprocess.run(
        ["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True
    )
    return {name for name in done.stdout.decode().split("\0") if name}


def drifted_outputs(root: Path, dvcfiles=DVCFILES) -> list[str]:
    """One line per git-tracked output whose hash differs from its lock file's (or that the
    lock file does not record): '<dvcfile>:<stage>: <path>: <what>'."""
    from dvc.dvcfile import load_file
    from dvc.repo import Repo

    tracked = _git_tracked(root)
    problems = []
    with Repo(str(root)) as repo:
        for dvcfile in dvcfiles:
            lock = Path(dvcfile).with_suffix(".lock")
            for stage in load_file(repo, str(root / dvcfile)).stages.values():
                for out in stage.outs:
                    rel = Path(out.fs_path).relative_to(root).as_posix()
                    if rel not in tracked and not any(t.startswith(rel + "/") for t in tracked):
                        continue
                    where = f"{dvcfile}:{stage.name}: {rel}"
                    if not out.hash_info or not out.hash_info.value:
                        problems.append(f"{where}: git-tracked, but {lock} records no hash")
                    elif not Path(out.fs_path).exists():
                        problems.append(f"{where}: recorded in {lock}, missing on disk")
                    elif out.changed_checksum():
                        problems.append(
                            f"{where}: {out.get_hash().value} on disk, "
                            f"{out.hash_info.value} in {lock}"
                        )
    return problems


def test_committed_outputs_match_the_lock_files():
    """Regenerate with `dvc repro` and `dvc repro study/dvc.yaml`, then commit locks and outputs."""
    problems = drifted_outputs(REPO)
    assert not problems, "committed outputs differ from the lock files:\n" + "\n".join(problems)


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{cmd}: {done.stdout}\n{done.stderr}"


def test_the_guard_passes_on_a_real_repro_and_catches_a_hand_edit(tmp_path: Path):
    """A one-stage pipeline in a temporary git repo, reproduced by real DVC: its `cache: false`
    metric, plot and report match the lock; a hand-edited metric (a text file) is reported."""
    dvc = str(Path(sys.executable).with_name("dvc"))
    _run(["git", "init", "-q"], tmp_path)
    _run(["git", "config", "user.email", "t@example.com"], tmp_path)
    _run(["git", "config", "user.name", "t"], tmp_path)
    _run([dvc, "init", "-q"], tmp_path)
    (tmp_path / "make.py").write_text(
        "import json, pathlib\n"
        "pathlib.Path('metrics').mkdir(exist_ok=True)\n"
        "pathlib.Path('reports').mkdir(exist_ok=True)\n"
        "pathlib.Path('metrics/m.json').write_text(json.dumps({'accuracy': 0.73}) + '\\n')\n"
        "pathlib.Path('plots').mkdir(exist_ok=True)\n"
        "pathlib.Path('plots/curve.csv').write_text('epoch,loss\\r\\n1,0.5\\r\\n2,0.4\\r\\n')\n"
        "pathlib.Path('reports/r.md').write_text('# report\\n')\n"
    )
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  make:\n"
        f"    cmd: {sys.executable} make.py\n"
        "    deps: [make.py]\n"
        "    outs:\n      - reports/r.md:\n          cache: false\n"
        "    metrics:\n      - metrics/m.json:\n          cache: false\n"
        "    plots:\n      - plots/curve.csv:\n          cache: false\n"
    )
    _run([dvc, "repro", "-q"], tmp_path)
    _run(["git", "add", "-A"], tmp_path)
    _run(["git", "commit", "-qm", "repro"], tmp_path)

    assert drifted_outputs(tmp_path, ("dvc.yaml",)) == []
    lock = (tmp_path / "dvc.lock").read_text()
    crlf = (tmp_path / "plots" / "curve.csv").read_bytes()
    assert hashlib.md5(crlf).hexdigest() in lock  # DVC 3: the plain md5, CRLF kept

    (tmp_path / "metrics" / "m.json").write_text(json.dumps({"accuracy": 0.99}) + "\n")
    problems = drifted_outputs(tmp_path, ("dvc.yaml",))
    assert len(problems) == 1
    assert problems[0].startswith("dvc.yaml:make: metrics/m.json: ")
    assert problems[0].endswith(" in dvc.lock")

    (tmp_path / "dvc.lock").unlink()
    problems = drifted_outputs(tmp_path, ("dvc.yaml",))
    assert sorted(p.split(": ")[1] for p in problems) == [
        "metrics/m.json", "plots/curve.csv", "reports/r.md"
    ]
    assert all(p.endswith("dvc.lock records no hash") for p in problems)
