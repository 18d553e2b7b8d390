"""atomic_outputs under failure: a full disk (a real, tiny tmpfs), a file-size limit, errors in
the block that are and are not about the outputs, a failed move. Always one ClrpipeError line
naming the output, and never a temporary left behind."""

from __future__ import annotations

import errno
import gzip
import json
import math
import os
import resource
import signal
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from clrpipe.errors import ClrpipeError
from clrpipe.pipeline import cli, outputs
from clrpipe.pipeline.outputs import atomic_outputs

PAGE = 4096
FULL = "No space left on device"


@pytest.fixture
def small_disk(tmp_path):
    """mount(size, name) -> a folder on a fresh tmpfs of `size` bytes (root only; skips
    otherwise). Every mount is undone after the test."""
    mounted: list[Path] = []

    def mount(size: int, name: str = "disk") -> Path:
        folder = tmp_path / name
        folder.mkdir(parents=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            pytest.skip(
                "a real full disk needs `mount -t tmpfs` (root with CAP_SYS_ADMIN): "
                f"{done.stderr.strip() or done.returncode}"
            )
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def listing(folder: Path) -> list[str]:
    """Every file under folder (hidden temporaries included), relative and sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_a_full_disk_names_the_output_and_leaves_no_temporary(small_disk):
    disk = small_disk(16 * PAGE)
    (disk / "report.json").write_text("old")
    targets = (disk / "report.json", disk / "big.bin", disk / "after.txt")
    with pytest.raises(ClrpipeError) as err, atomic_outputs(*targets) as (report, big, after):
        report.write_text("{}")
        big.write_bytes(b"x" * (32 * PAGE))
        after.write_text("never reached")
    assert str(err.value) == f"{disk}/big.bin: cannot write it ({FULL}); no output was replaced"
    assert listing(disk) == ["report.json"]
    assert (disk / "report.json").read_text() == "old"


def test_a_full_disk_under_pyarrow_names_the_parquet_file(small_disk):
    """pyarrow's OSError names no file: the output last written is the one named."""
    disk = small_disk(4 * PAGE)
    frame = pd.DataFrame(np.random.default_rng(0).random((20_000, 4)), columns=list("abcd"))
    with pytest.raises(ClrpipeError) as err, atomic_outputs(disk / "x.parquet") as (tmp,):
        frame.to_parquet(tmp)
    assert str(err.value) == f"{disk}/x.parquet: cannot write it ({FULL}); no output was replaced"
    assert listing(disk) == []


def prepared_sample(project: Path, cardio_bytes: bytes, rows: int = 3000) -> None:
    lines = cardio_bytes.split(b"\n")[: rows + 1]
    (project / "input.csv").write_bytes(b"\n".join(lines) + b"\n")
    result = CliRunner().invoke(cli.main, ["prepare", "data.raw=input.csv"])
    assert result.exit_code == 0, result.output


def test_split_on_a_full_disk_names_the_part_that_did_not_fit(project, cardio_bytes, small_disk):
    """The disk holds train.parquet and half of test.parquet: the message names test.parquet,
    exit 1, and the folder is left empty (train.parquet, though complete, is not moved in)."""
    prepared_sample(project, cardio_bytes)
    runner = CliRunner()
    assert runner.invoke(cli.main, ["split", "split.dir=sizes"]).exit_code == 0
    train, test = (Path("sizes") / name for name in ("train.parquet", "test.parquet"))
    pages = math.ceil(train.stat().st_size / PAGE) + math.ceil(test.stat().st_size / PAGE) // 2
    assert math.ceil(test.stat().st_size / PAGE) >= 4
    disk = small_disk(pages * PAGE)
    result = runner.invoke(cli.main, ["split", f"split.dir={disk}"])
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {disk}/test.parquet: cannot write it ({FULL}); no output was replaced\n"
    )
    assert listing(disk) == []


def test_prepare_on_a_full_disk_writes_neither_output(project, cardio_bytes, small_disk):
    disk = small_disk(2 * PAGE)
    lines = cardio_bytes.split(b"\n")[:3001]
    Path("input.csv").write_bytes(b"\n".join(lines) + b"\n")
    result = CliRunner().invoke(
        cli.main, ["prepare", "data.raw=input.csv", f"prepare.output={disk}/cardio.parquet"]
    )
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {disk}/cardio.parquet: cannot write it ({FULL}); no output was replaced\n"
    )
    assert listing(disk) == []
    assert not Path("metrics/prepare.json").exists()
    assert [p for p in Path().rglob(".*") if p.is_file()] == []


def test_a_file_size_limit_is_reported_like_a_full_disk(tmp_path):
    """RLIMIT_FSIZE (EFBIG) needs no mount: the same one line, no temporary."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(ClrpipeError) as err, atomic_outputs(tmp_path / "lr.csv") as (tmp,):
            tmp.write_bytes(b"1,0.1\n" * 50_000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert str(err.value) == (
        f"{tmp_path}/lr.csv: cannot write it (File too large); no output was replaced"
    )
    assert listing(tmp_path) == []


def test_temporaries_keep_the_final_suffix(tmp_path):
    """So suffix-driven writers write the temporary as they would the output: pandas
    compresses `.gz`, Keras insists on `.keras`."""
    targets = (tmp_path / "history.csv.gz", tmp_path / "model.keras", tmp_path / "LOCK")
    with atomic_outputs(*targets) as temps:
        names = [t.name for t in temps]
        pd.DataFrame({"epoch": [1, 2]}).to_csv(temps[0], index=False)
        temps[1].write_text("model")
        temps[2].write_text("lock")
    assert names[0].startswith(".history.csv.gz.") and names[0].endswith(".gz")
    assert names[1].startswith(".model.keras.") and names[1].endswith(".keras")
    assert names[2].startswith(".LOCK.") and names[2].endswith(".tmp")
    assert gzip.decompress(targets[0].read_bytes()) == b"epoch\n1\n2\n"
    assert listing(tmp_path) == ["LOCK", "history.csv.gz", "model.keras"]


def test_keras_saves_straight_to_the_temporary_and_a_full_disk_is_one_line(
    tmp_path, small_disk
):
    """What the train stage can do instead of saving to `tmp.with_suffix(".keras")`."""
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with atomic_outputs(tmp_path / "baseline.keras") as (tmp,):
        model.save(tmp)
    again = keras.saving.load_model(tmp_path / "baseline.keras")
    assert [w.shape for w in again.get_weights()] == [(3, 2), (2,)]
    assert listing(tmp_path) == ["baseline.keras"]

    disk = small_disk(PAGE)
    with pytest.raises(ClrpipeError) as err, atomic_outputs(disk / "baseline.keras") as (tmp,):
        keras.Sequential([keras.Input((300,)), keras.layers.Dense(300)]).save(tmp)
    assert str(err.value) == (
        f"{disk}/baseline.keras: cannot write it ({FULL}); no output was replaced"
    )
    assert listing(disk) == []


def test_an_oserror_naming_a_temporary_names_its_output(tmp_path):
    targets = (tmp_path / "a.json", tmp_path / "b.json")
    with pytest.raises(ClrpipeError) as err, atomic_outputs(*targets) as (a, b):
        a.write_text("{}")
        raise PermissionError(errno.EACCES, "Permission denied", str(b))
    assert str(err.value) == (
        f"{tmp_path}/b.json: cannot write it (Permission denied); no output was replaced"
    )
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        FileNotFoundError(errno.ENOENT, "No such file or directory", "elsewhere.csv"),
        OSError("tracking server unreachable"),
    ],
    ids=["connection refused", "another file", "no errno"],
)
def test_oserrors_not_about_the_outputs_pass_through(tmp_path, error):
    """E.g. MLflow logging inside the block: not turned into a misleading "cannot write"."""
    with pytest.raises(type(error)) as raised, atomic_outputs(tmp_path / "m.json") as (tmp,):
        tmp.write_text("{}")
        raise error
    assert raised.value is error
    assert listing(tmp_path) == []


def test_a_failed_move_says_which_outputs_were_already_replaced(tmp_path, monkeypatch):
    targets = (tmp_path / "a.json", tmp_path / "b.json")
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise PermissionError(errno.EACCES, "Permission denied", str(src), None, str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", replace)
    with pytest.raises(ClrpipeError) as err, atomic_outputs(*targets) as temps:
        for temp in temps:
            temp.write_text("new")
    assert str(err.value) == (
        f"{targets[1]}: cannot move it into place (Permission denied); 1 of 2 outputs were "
        f"already replaced ({targets[0]})"
    )
    assert listing(tmp_path) == ["a.json"]


def test_a_folder_in_the_way_of_an_output_is_refused_before_any_work(tmp_path):
    (tmp_path / "out.json").mkdir()
    ran = False
    targets = (tmp_path / "x", tmp_path / "out.json")
    with pytest.raises(ClrpipeError) as err, atomic_outputs(*targets):
        ran = True
    assert str(err.value) == (
        f"{tmp_path}/out.json: is a folder; expected a file path for this output"
    )
    assert not ran
    assert listing(tmp_path) == []


def test_an_output_whose_folder_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "plots").write_text("a file where a folder should be")
    target = tmp_path / "plots" / "train" / "lr.csv"
    with pytest.raises(ClrpipeError) as err, atomic_outputs(tmp_path / "ok.json", target):
        pass
    assert str(err.value) == (
        f"{target}: cannot create it (Not a directory: {tmp_path}/plots/train)"
    )
    assert listing(tmp_path) == ["plots"]


def test_temporaries_are_removed_on_interrupt_and_on_any_error(tmp_path):
    for error in (KeyboardInterrupt(), RuntimeError("stage failed"), ClrpipeError("bad")):
        with pytest.raises(type(error)), atomic_outputs(tmp_path / "a.parquet") as (tmp,):
            tmp.write_text("partial")
            raise error
        assert listing(tmp_path) == []


def test_a_writer_that_made_a_folder_of_the_temporary_is_cleaned_up(tmp_path):
    with pytest.raises(RuntimeError), atomic_outputs(tmp_path / "saved_model") as (tmp,):
        tmp.unlink()
        (tmp / "variables").mkdir(parents=True)
        (tmp / "variables" / "data").write_text("x")
        raise RuntimeError("export failed")
    assert list(tmp_path.iterdir()) == []


def test_outputs_written_in_full_when_nothing_fails(tmp_path):
    targets = (tmp_path / "m.json", tmp_path / "sub" / "t.parquet")
    with atomic_outputs(*targets) as (metrics, table):
        metrics.write_text(json.dumps({"ok": 1}))
        pd.DataFrame({"a": [1]}).to_parquet(table)
    assert listing(tmp_path) == ["m.json", "sub/t.parquet"]
