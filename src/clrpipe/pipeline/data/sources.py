"""Where a user's table may come from: a file in the project, or `data.source` (an absolute
path, a `~` path or an http(s) URL) that `fetch` imports into the project at `data.raw`.

DVC tracks files inside the repository only (an output outside it fails `dvc repro` with an
empty `ERROR: failed to reproduce 'fetch': `), so the table the stages read is always the
project's copy `data.raw`, a DVC output of `fetch` with its content hash in `dvc.lock`;
`--temp` and queued experiments get it from DVC's cache. `clrpipe params data.raw=/abs/x.csv`
is written as `data.source=/abs/x.csv data.raw=data/raw/x.csv` (`split_outside`).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from clrpipe.errors import ClrpipeError, first_line
from clrpipe.pipeline.outputs import atomic_outputs

__all__ = ["IMPORT_DIR", "import_table", "is_outside", "split_outside"]

IMPORT_DIR = Path("data/raw")
"""Where `fetch` puts an imported table (`data/raw/<its file name>`)."""
URL_SCHEMES = ("http", "https")
TIMEOUT_SECONDS = 60
CHUNK = 1 << 20


def is_url(value: str) -> bool:
    return urlparse(value).scheme in URL_SCHEMES


def is_outside(value: str | Path) -> bool:
    """Whether `value` names a table outside the project (the working folder), which
    `fetch`'s DVC output cannot be: a URL, a `~` path (DVC does not expand it), or an
    absolute or `..` path leading out."""
    text = str(value)
    full = Path(os.path.abspath(os.path.expanduser(text)))
    return is_url(text) or text.startswith("~") or not full.is_relative_to(Path.cwd())


def import_name(source: str) -> str:
    """The file name the imported copy gets: the path's (or URL path's) last part."""
    path = unquote(urlparse(source).path) if is_url(source) else source
    name = PurePosixPath(path.replace("\\", "/")).name
    if not name:
        raise ClrpipeError(f"data.source: {source}: names no file; expected a path or URL "
                           "ending in the table's file name (e.g. .../mine.csv)")
    return name


def split_outside(data: dict) -> tuple[dict, str | None]:
    """`data:` with a `data.raw` outside the project moved to `data.source` and `data.raw`
    set to its copy in `IMPORT_DIR`, and a note saying so (None when nothing moved)."""
    raw = data.get("raw")
    if data.get("kind") != "table" or raw is None or not is_outside(raw):
        return data, None
    if data.get("source") is not None:
        raise ClrpipeError(f"data.raw: {raw} is outside the project; with data.source set, "
                           "data.raw must be the project copy (e.g. data/raw/mine.csv)")
    copy = (IMPORT_DIR / import_name(str(raw))).as_posix()
    return ({**data, "source": str(raw), "raw": copy},
            f"data.raw {raw} is outside the project: fetch imports it (data.source) to {copy}")


def import_table(source: str, raw: Path, sha256: str | None = None) -> str:
    """Copy the table at `source` (a path or an http(s) URL) to `raw`, all or nothing; return
    its sha256, which must be `sha256` when that is given. A failure is one line naming
    `data.source` (or `data.sha256`) and what to do."""
    digest = hashlib.sha256()
    with atomic_outputs(raw) as (tmp,):
        with tmp.open("wb") as out:
            for chunk in _chunks(source):
                digest.update(chunk)
                out.write(chunk)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ClrpipeError(f"data.sha256: {source} has sha256 {digest.hexdigest()}, not "
                               f"{sha256}; set data.sha256 to the new one if it is meant to "
                               "change")
    return digest.hexdigest()


def _chunks(source: str):
    if is_url(source):
        yield from _download(source)
        return
    path = Path(os.path.expanduser(source))
    if urlparse(source).scheme not in ("", "file") and not path.is_absolute():
        raise ClrpipeError(f"data.source: {source}: expected a file path (absolute or ~) or an "
                           "http(s) URL")
    if path.is_dir():
        raise ClrpipeError(f"data.source: {source}: is a folder; expected the table's file")
    try:
        with path.open("rb") as src:
            while chunk := src.read(CHUNK):
                yield chunk
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else first_line(err)
        raise ClrpipeError(f"data.source: {source}: cannot read it ({reason}); expected an "
                           "existing table file") from None


def _download(url: str):
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            while chunk := response.read(CHUNK):
                yield chunk
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) if not isinstance(err, urllib.error.HTTPError) \
            else f"HTTP {err.code} {err.reason}"
        raise ClrpipeError(f"data.source: {url}: cannot download it ({reason or first_line(err)})"
                           "; check the URL, or download the file and set data.source to its "
                           "path") from None
