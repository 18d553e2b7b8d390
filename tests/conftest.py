"""Shared fixtures: the real cardio table (never committed) and a scratch project folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CARDIO_CSV = Path(
    os.environ.get("CLRPIPE_CARDIO_CSV", REPO.parent / "shared" / "data" / "cardio_train.csv")
)


@pytest.fixture(scope="session")
def cardio_csv() -> Path:
    """The real Kaggle table, read from ../shared/data (or $CLRPIPE_CARDIO_CSV)."""
    if not CARDIO_CSV.is_file():
        pytest.fail(f"{CARDIO_CSV}: the real cardio table is needed; set CLRPIPE_CARDIO_CSV")
    return CARDIO_CSV


@pytest.fixture(scope="session")
def cardio_bytes(cardio_csv: Path) -> bytes:
    return cardio_csv.read_bytes()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch copy of the project's config, used as the working directory."""
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path
