"""Getting the raw table: a local copy named by $CLRPIPE_CARDIO_CSV, or a Kaggle download,
always checked against `data.sha256` before it is put at `data.raw`."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from clrpipe.errors import ClrpipeError, first_line
from clrpipe.pipeline.outputs import atomic_outputs
from clrpipe.pipeline.params import DataSource

__all__ = ["KAGGLE_PAGE", "LOCAL_COPY_ENV", "fetch_raw", "kaggle_download", "local_or_kaggle",
           "read_raw", "refuse_folder", "sha256_of"]

KAGGLE_PAGE = "https://www.kaggle.com/datasets/{dataset}"
LOCAL_COPY_ENV = "CLRPIPE_CARDIO_CSV"


def sha256_of(path: Path) -> str:
    """The file's sha256, hex."""
    return hashlib.sha256(_read(path)).hexdigest()


def refuse_folder(raw: Path, file_name: str) -> None:
    """A folder given as data.raw is a mistake to name, not a file to download."""
    if raw.is_dir():
        raise ClrpipeError(
            f"{raw}: is a folder; data.raw must be the path of the CSV file "
            f"(e.g. data.raw={raw / file_name})"
        )


def read_raw(raw: Path, file_name: str) -> bytes:
    """The raw table's bytes, or one line saying why they cannot be read."""
    refuse_folder(raw, file_name)
    if not raw.is_file():
        raise ClrpipeError(f"{raw}: not found; run `clrpipe fetch` first")
    return _read(raw)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise ClrpipeError(f"{path}: cannot read it ({reason})") from None


def kaggle_download(dataset: str) -> Path:
    """Download (or reuse kagglehub's cache of) a Kaggle dataset; return its folder."""
    import kagglehub

    return Path(kagglehub.dataset_download(dataset))


def local_or_kaggle() -> Callable[[str], Path]:
    """The download to use: the file $CLRPIPE_CARDIO_CSV names when set, else Kaggle."""
    local = os.environ.get(LOCAL_COPY_ENV)
    return (lambda _: Path(local)) if local else kaggle_download


def fetch_raw(source: DataSource, download: Callable[[str], Path] = kaggle_download) -> None:
    """Download the table and check its sha256, or explain where to put it."""
    where = (
        f"{source.raw}: not found and not downloadable ({{reason}}); download "
        f"{source.kaggle_file} from {KAGGLE_PAGE.format(dataset=source.kaggle_dataset)} "
        f"and put it at {source.raw.resolve()}"
    )
    try:
        folder = download(source.kaggle_dataset)  # a folder, or the file itself
    except Exception as err:  # kagglehub raises many types: offline, no credentials, 404
        raise ClrpipeError(where.format(reason=first_line(err))) from None
    downloaded = folder if folder.is_file() else folder / source.kaggle_file
    if not downloaded.is_file():
        raise ClrpipeError(where.format(reason=f"the download has no {source.kaggle_file}"))
    digest = sha256_of(downloaded)
    if digest != source.sha256:
        raise ClrpipeError(
            f"{downloaded}: sha256 {digest} does not match data.sha256 {source.sha256}; "
            "refusing to use it"
        )
    with atomic_outputs(source.raw) as (tmp,):
        shutil.copyfile(downloaded, tmp)
