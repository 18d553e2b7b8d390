"""Getting the raw table: a local copy named by $CLRPIPE_CARDIO_CSV, or a Kaggle download,
always checked against `data.sha256` before it is put at `data.raw`."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from clrpipe.errors import ClrpipeError, first_line
from clrpipe.outputs import atomic_outputs
from clrpipe.params import DataParams

__all__ = ["KAGGLE_PAGE", "LOCAL_COPY_ENV", "fetch_raw", "kaggle_download", "local_or_kaggle",
           "sha256_of"]

KAGGLE_PAGE = "https://www.kaggle.com/datasets/{dataset}"
LOCAL_COPY_ENV = "CLRPIPE_CARDIO_CSV"


def sha256_of(path: Path) -> str:
    """The file's sha256, hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def kaggle_download(dataset: str) -> Path:
    """Download (or reuse kagglehub's cache of) a Kaggle dataset; return its folder."""
    import kagglehub

    return Path(kagglehub.dataset_download(dataset))


def local_or_kaggle() -> Callable[[str], Path]:
    """The download to use: the file $CLRPIPE_CARDIO_CSV names when set, else Kaggle."""
    local = os.environ.get(LOCAL_COPY_ENV)
    return (lambda _: Path(local)) if local else kaggle_download


def fetch_raw(source: DataParams, download: Callable[[str], Path] = kaggle_download) -> None:
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
