"""The study's datasets: cardio and tables that ship inside installed packages, as split arrays.

Each packaged table goes through the generic table path a user's table takes
(`tables.prepare_table`: checks, task inference, typing; `tables.Preprocessor` fitted on the
training part only: imputation, one-hot encoding, scaling), then a stratified test part
(`study.test_size`) and validation slice (`study.validation_fraction`). Cardio is the pipeline's
own split when `split.dir` holds it, else prepared here from the raw CSV the same way the
`prepare` and `split` stages do (repairs, features, a scaler fitted on train).

| name | source | rows | task |
|---|---|---|---|
| cardio | Kaggle table (`data.raw`) | 69,908 | binary |
| breast_cancer | scikit-learn | 569 | binary |
| diabetes | scikit-learn | 442 | regression |
| wine | scikit-learn | 178 | multiclass (3) |
| digits | scikit-learn | 1,797 | multiclass (10) |
| penguins | palmerpenguins | 344 (text categories, gaps) | multiclass (3) |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from clrpipe.errors import ClrpipeError
from clrpipe.pipeline.data import cardio, download, tables
from clrpipe.pipeline.data.tasks import CARDIO, Dataset, OutputSpec
from clrpipe.pipeline.params import CardioData, TableData
from clrpipe.pipeline.training.trial import SplitArrays, load_split, split_arrays

__all__ = ["PACKAGED", "StudyData", "load_dataset", "packaged_frame"]

PACKAGED = {
    "breast_cancer": "target",
    "diabetes": "target",
    "wine": "target",
    "digits": "target",
    "penguins": "species",
}
"""Packaged table -> its target column."""


@dataclass(frozen=True)
class StudyData:
    """One dataset ready to train on: its split arrays and where they came from."""

    name: str
    split: SplitArrays
    source: str
    rows: int

    @property
    def task(self) -> str:
        return self.split.output.task


def packaged_frame(name: str) -> pd.DataFrame:
    """The raw table as its package ships it (target column included)."""
    if name == "penguins":
        from importlib.resources import files

        return pd.read_csv(files("palmerpenguins") / "data" / "penguins.csv")
    from sklearn import datasets

    loaders = {"breast_cancer": datasets.load_breast_cancer, "diabetes": datasets.load_diabetes,
               "wine": datasets.load_wine, "digits": datasets.load_digits}
    if name not in loaders:
        raise ClrpipeError(f"study.datasets: unknown dataset {name!r}; expected cardio or one of "
                           f"{', '.join(PACKAGED)}")
    kwargs = {"scaled": False} if name == "diabetes" else {}
    frame = loaders[name](as_frame=True, **kwargs).frame
    if name == "digits":  # 64 pixel intensities 0..16, a class in 0..9: task stated, not inferred
        frame = frame.astype({c: "float64" for c in frame.columns if c != "target"})
    return frame


def _sample(frame: pd.DataFrame, rows: int | None, target: str, seed: int,
            classification: bool) -> pd.DataFrame:
    if rows is None or rows >= len(frame):
        return frame
    kept, _ = train_test_split(frame, train_size=rows, random_state=seed,
                               stratify=frame[target] if classification else None)
    return kept.reset_index(drop=True)


def _packaged(name: str, test_size: float, validation_fraction: float, seed: int,
              rows: int | None) -> StudyData:
    frame = packaged_frame(name)
    task = "multiclass" if name == "digits" else None
    cfg = TableData(kind="table", raw=Path(f"{name}.csv"), target=PACKAGED[name], task=task)
    prepared, schema, _, _ = tables.prepare_table(frame, cfg, f"{name} (packaged)")
    prepared = _sample(prepared, rows, schema.target, seed, schema.is_classification)
    tables.check_splittable(prepared, schema, test_size, name)
    train, test = train_test_split(
        prepared, test_size=test_size, random_state=seed,
        stratify=prepared[schema.target] if schema.is_classification else None,
    )
    fitted = tables.Preprocessor.fit(train, schema, cfg.missing)
    parts = []
    for part in (train, test):
        x, _ = fitted.transform(part)
        encoded = pd.DataFrame(x, columns=fitted.features)
        encoded["target"] = fitted.encode_target(part[schema.target])
        parts.append(encoded)
    output = OutputSpec(schema.task, tuple(schema.classes or ()), fitted.target_mean,
                        fitted.target_std)
    dataset = Dataset(tuple(fitted.features), "target", output, name=name)
    split = split_arrays(parts[0], parts[1], dataset, validation_fraction, seed)
    return StudyData(name, split, "packaged", len(prepared))


def _cardio(source: CardioData, split_dir: Path, test_size: float, validation_fraction: float,
            seed: int, rows: int | None) -> StudyData:
    if rows is None and (split_dir / "train.parquet").is_file():
        train, test, dataset = load_split(split_dir)
        if dataset.name == "cardio":
            split = split_arrays(train, test, dataset, validation_fraction, seed)
            return StudyData("cardio", split, str(split_dir), len(train) + len(test))
    raw = download.read_raw(source.raw, source.kaggle_file)
    frame, _, _ = cardio.prepare(raw, str(source.raw), source.limits)
    frame = _sample(frame, rows, cardio.TARGET, seed, True)
    train, test = train_test_split(frame, test_size=test_size, random_state=seed,
                                   stratify=frame[cardio.TARGET])
    parts, _ = cardio.standardize(train, test)
    dataset = Dataset(tuple(cardio.FEATURES), cardio.TARGET, CARDIO)
    split = split_arrays(parts[0], parts[1], dataset, validation_fraction, seed)
    return StudyData("cardio", split, str(source.raw), len(frame))


def load_dataset(name: str, *, cardio: CardioData | None, split_dir: Path, test_size: float,
                 validation_fraction: float, seed: int, rows: int | None = None) -> StudyData:
    """The dataset `name` as split arrays (see the module docstring)."""
    if name == "cardio":
        if cardio is None:
            raise ClrpipeError("study.datasets.cardio: needs data.kind cardio (data.raw, the "
                               "Kaggle table)")
        return _cardio(cardio, split_dir, test_size, validation_fraction, seed, rows)
    return _packaged(name, test_size, validation_fraction, seed, rows)
