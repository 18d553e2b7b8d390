"""A table from outside the project (`data.source`: an absolute or ~ path, an http(s) URL),
imported by `fetch` into `data/raw/`: the unit parts, and real DVC in a temporary git repo with
a table given by absolute path and one served by `http.server` on 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest
import yaml
from sklearn.datasets import load_breast_cancer

from clrpipe.errors import ClrpipeError
from clrpipe.pipeline import config
from clrpipe.pipeline.data import sources
from tests.test_dvc_pipeline import BIN, build_repo, ran

TABLE = ["data=table", "data.target=target"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A folder outside any project with a real table, served on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("elsewhere")
    load_breast_cancer(as_frame=True).frame.to_csv(folder / "cancer table.csv", index=False)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(timeout=30)


def test_outside_raw_moves_to_source():
    data, note = sources.split_outside({"kind": "table", "raw": "/home/me/mine.csv"})
    assert (data["source"], data["raw"]) == ("/home/me/mine.csv", "data/raw/mine.csv")
    assert note == ("data.raw /home/me/mine.csv is outside the project: fetch imports it "
                    "(data.source) to data/raw/mine.csv")
    data, _ = sources.split_outside({"kind": "table", "raw": "https://x.org/d/a%20b.tsv?x=1"})
    assert data["raw"] == "data/raw/a b.tsv"
    assert sources.split_outside({"kind": "table", "raw": "data/raw/t.csv"})[1] is None
    inside = str(Path.cwd() / "data" / "raw" / "t.csv")  # absolute, but in the project
    assert sources.split_outside({"kind": "table", "raw": inside})[1] is None
    assert sources.split_outside({"kind": "table", "raw": "~/t.csv"})[0]["source"] == "~/t.csv"
    assert sources.split_outside({"kind": "table", "raw": "../t.csv"})[0]["raw"] == \
        "data/raw/t.csv"


def test_outside_raw_in_params_is_one_line_naming_the_key():
    cfg = config.compose([*TABLE, "data.raw=/home/me/mine.csv"])
    with pytest.raises(ClrpipeError) as err:
        config.validated(cfg)
    assert str(err.value) == (
        "params.yaml: data.raw: expected a path inside the project (DVC tracks only those), "
        "got /home/me/mine.csv; set data.source=/home/me/mine.csv and data.raw="
        "data/raw/mine.csv (`clrpipe params data.raw=...` does this), and fetch imports it")


def test_import_copies_hashes_and_refuses_in_one_line(served, tmp_path):
    folder, url = served
    original = (folder / "cancer table.csv").read_bytes()
    digest = hashlib.sha256(original).hexdigest()
    raw = tmp_path / "data" / "raw" / "t.csv"
    assert sources.import_table(f"{url}/cancer%20table.csv", raw, digest) == digest
    assert raw.read_bytes() == original
    raw.unlink()
    cases = [
        (f"{url}/nothing.csv", None, f"data.source: {url}/nothing.csv: cannot download it "
                                     "(HTTP 404 File not found); check the URL"),
        (str(folder / "nothing.csv"), None, f"data.source: {folder / 'nothing.csv'}: cannot "
                                            "read it (No such file or directory)"),
        (str(folder), None, f"data.source: {folder}: is a folder"),
        (str(folder / "cancer table.csv"), "0" * 64, f"data.sha256: {folder / 'cancer table.csv'}"
                                                     f" has sha256 {digest}, not {'0' * 64}"),
    ]
    for source, pin, message in cases:
        with pytest.raises(ClrpipeError) as err:
            sources.import_table(source, raw, pin)
        assert str(err.value).startswith(message), str(err.value)
        assert "\n" not in str(err.value)
        assert not raw.exists() and list(raw.parent.iterdir()) == []  # nothing half-written


@pytest.mark.slow
@pytest.mark.parametrize("where", ["absolute path", "http"])
def test_dvc_repro_imports_a_table_from_outside(served, tmp_path_factory, where):
    folder, url = served
    source = str(folder / "cancer table.csv") if where == "absolute path" \
        else f"{url}/cancer%20table.csv"
    repo = build_repo(tmp_path_factory.mktemp("outside_repo"), tmp_path_factory.mktemp("site"))
    repo.run("git", "add", "-A")
    repo.run("git", "commit", "-q", "-m", "clrpipe project")
    done = repo.run(BIN / "clrpipe", "params", *TABLE, f"data.raw={source}")
    assert "fetch imports it (data.source) to data/raw/cancer table.csv" in done.stdout
    params = yaml.safe_load((repo.root / "params.yaml").read_text())["data"]
    assert (params["source"], params["raw"]) == (source, "data/raw/cancer table.csv")
    done = repo.dvc("repro", "split")
    assert ran(done.stdout + done.stderr) == {"fetch", "prepare", "split"}
    original = (folder / "cancer table.csv").read_bytes()
    copy = repo.root / "data" / "raw" / "cancer table.csv"
    assert copy.read_bytes() == original
    lock = yaml.safe_load((repo.root / "dvc.lock").read_text())["stages"]
    (out,) = lock["fetch"]["outs"]
    assert out["path"] == "data/raw/cancer table.csv"
    assert out["md5"] == hashlib.md5(original).hexdigest()
    assert repo.read_json("metrics/prepare.json")["rows_out"] == 569
    # fetch to split are up to date, the import in DVC's cache: an experiment's copy gets it
    assert json.loads(repo.dvc("status", "split", "--json").stdout or "{}") == {}
