"""Typed models of every `params.yaml` section: the one place configuration is validated.

Each section of `params.yaml` (composed from `conf/` by Hydra) has a pydantic model here, named
after it: `data` -> `DataParams`, `schedule` -> `ScheduleParams` (a union discriminated on
`policy`), ... `Params` is the whole file. Unknown keys are errors, never ignored, and every
error is one line naming the dotted key (`schedule.step_size: expected a number > 0, got -3`).

Pure: pydantic only, no TensorFlow, Keras or MLflow, so a bad config fails in well under a
second, before anything heavy is imported. Stage entry points declare the part they read as a
`Reads` projection (unknown keys ignored there, since `Params` has already checked them);
`tests/test_dvc_graph.py` derives each stage's `dvc.yaml` params from those declarations.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from clrpipe.pipeline.params_compare import (  # the compare and study sections
    CompareParams,
    HgbParams,
    MethodParams,
    RayParams,
    StudyDataset,
    StudyGrid,
    StudyMethod,
    StudyParams,
)
from clrpipe.settings import (  # the library's config types, re-exported
    POLICIES,
    ConstantSchedule,
    CyclicalSchedule,
    Integer,
    OneCycleSchedule,
    Positive,
    PositiveInt,
    RangeTestParams,
    ScheduleParams,
    Section,
    describe,
    fill_bounds,
    parse,
    schedule_spec,
)

PARAMS_FILE = Path("params.yaml")

AUTO = "auto"
AUTO_KEYS = {
    "train.baseline.batch_size": "batch_size",
    "train.baseline.epochs": "epochs",
    "train.clr.batch_size": "batch_size",
    "train.clr.epochs": "epochs",
    "schedule.step_size_epochs": "step_size_epochs",
    "range_test.num_steps": "num_steps",
    "range_test.validation_rows": "validation_rows",
}
"""The keys that may say `auto`: sized from the table's training rows by `data.sizing.rule`
(the name is the rule's field) in the stages that know the rows, before they read the key."""
_AUTO_STAND_INS = {"batch_size": 1, "epochs": 1, "step_size_epochs": 1.0, "num_steps": 400,
                   "validation_rows": 0}

__all__ = [
    "ACTIVATIONS",
    "AUTO",
    "AUTO_KEYS",
    "INITIALIZERS",
    "PARAMS_FILE",
    "POLICIES",
    "TASKS",
    "BuiltinModel",
    "CardioData",
    "CompareParams",
    "ConstantSchedule",
    "CustomModel",
    "CyclicalSchedule",
    "DataParams",
    "DataSource",
    "HgbParams",
    "Limits",
    "MethodParams",
    "ModelParams",
    "OneCycleSchedule",
    "Params",
    "PrepareParams",
    "RangeTestParams",
    "RayParams",
    "Reads",
    "RegistryName",
    "RegistryParams",
    "RunParams",
    "ScheduleParams",
    "Section",
    "SplitDir",
    "SplitParams",
    "StudyDataset",
    "StudyGrid",
    "StudyMethod",
    "StudyParams",
    "TableData",
    "TrackingParams",
    "TrainCommon",
    "TrainParams",
    "describe",
    "fill_bounds",
    "parse",
    "schedule_spec",
    "settle_auto_schedule",
]


class Reads(BaseModel):
    """Base of a stage's projection of `params.yaml`: the sections and keys that stage reads.

    Its fields mirror the file's nesting but list only what the stage uses; other keys are
    ignored here because `Params` validated the whole file already."""

    model_config = ConfigDict(extra="ignore", frozen=True)


# --- data, prepare, split -------------------------------------------------------------------

Range = tuple[float, float]


class Limits(Section):
    """`data.limits:` physiologically plausible ranges (inclusive) the repair rules aim for."""

    ap_hi: Range = (60, 250)
    ap_lo: Range = (30, 200)
    height: Range = (120, 220)
    weight: Range = (30, 250)
    bmi: Range = (12, 80)

    @field_validator("*")
    @classmethod
    def _ordered(cls, value: Range) -> Range:
        if not 0 < value[0] < value[1]:
            raise ValueError(f"expected [low, high] with 0 < low < high, got {list(value)}")
        return value


class DataSource(Reads):
    """The `data:` keys saying where the cardio table lives and where to fetch it."""

    raw: Path
    kaggle_dataset: str
    kaggle_file: str
    sha256: str


class CardioData(DataSource):
    """`data: cardio` (the default): the Kaggle table, its repair limits, and the validation
    accuracy that counts as reaching a good model (`compare`'s epochs-to-target)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["cardio"] = "cardio"
    limits: Limits = Limits()
    target_score: float | None = Field(default=None, gt=0, lt=1)


TASKS = ("binary", "multiclass", "regression")


class TableData(Section):
    """`data: table`: any CSV, TSV or Parquet table with a target column.

    `task` is inferred when null (text, boolean or at most `max_classes` integer levels mean
    classification, floats regression); `categorical` null means the text and boolean columns;
    `missing: impute` fills gaps on the training part (median / most frequent, with indicator
    columns), `refuse` rejects a table with any. `source` (a path outside the project or an
    http(s) URL) is what `fetch` imports to `raw`, checked against `sha256` when set."""

    kind: Literal["table"]
    raw: Path
    source: str | None = None
    sha256: str | None = Field(default=None, pattern="^[0-9a-f]{64}$")
    target: str = Field(min_length=1)
    task: Literal["binary", "multiclass", "regression"] | None = None
    format: Literal["csv", "tsv", "parquet"] | None = None
    id_columns: list[str] = []
    ignore_columns: list[str] = []
    categorical: list[str] | None = None
    missing: Literal["impute", "refuse"] = "impute"
    max_classes: PositiveInt = 20
    target_score: float | None = None

    @field_validator("raw", "target", mode="before")
    @classmethod
    def _required(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("required (data.raw=FILE data.target=COLUMN), got null")
        return value

    @field_validator("raw")
    @classmethod
    def _inside(cls, raw: Path) -> Path:
        text = str(raw)
        if re.match(r"https?:/", text) or text.startswith("~") or not _in_project(raw):
            raise ValueError(
                f"expected a path inside the project (DVC tracks only those), got {text}; "
                f"set data.source={text} and data.raw=data/raw/{raw.name} (`clrpipe params "
                "data.raw=...` does this), and fetch imports it"
            )
        return raw


def _in_project(path: Path) -> bool:
    """Whether `path` is inside the project (the working folder: stages run from its root)."""
    full = Path(os.path.abspath(path))
    return full.is_relative_to(Path.cwd())


def _kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("kind", "cardio")
    return getattr(value, "kind", None)


DataParams = Annotated[
    Annotated[CardioData, Tag("cardio")] | Annotated[TableData, Tag("table")],
    Discriminator(_kind),
]
"""`data:` the cardio table (default) or a user's table, chosen by `kind`."""


class PrepareParams(Section):
    """`prepare:` where the features and the repair report go."""

    output: Path
    report: Path


class SplitDir(Reads):
    """The `split.dir` key alone: where the training stages read the split from."""

    dir: Path


class SplitParams(Section):
    """`split:` the held-out fraction, the seed, and the output folder."""

    test_size: float = Field(gt=0, lt=1)
    seed: Integer
    dir: Path


# --- model ------------------------------------------------------------------------------------

ACTIVATIONS = (
    "celu", "elu", "exponential", "gelu", "glu", "hard_shrink", "hard_sigmoid", "hard_silu",
    "hard_swish", "hard_tanh", "leaky_relu", "linear", "log_sigmoid", "log_softmax", "mish",
    "relu", "relu6", "selu", "sigmoid", "silu", "soft_shrink", "softmax", "softplus",
    "softsign", "sparse_plus", "sparse_sigmoid", "sparsemax", "squareplus", "swish", "tanh",
    "tanh_shrink", "threshold",
)  # fmt: skip
"""Keras 3.15's activation names (kept here so config checks need no Keras; a test compares)."""
INITIALIZERS = (
    "constant", "glorot_normal", "glorot_uniform", "he_normal", "he_uniform", "identity",
    "lecun_normal", "lecun_uniform", "normal", "one", "ones", "orthogonal", "random_normal",
    "random_uniform", "truncated_normal", "uniform", "variance_scaling", "zero", "zeros",
)  # fmt: skip
"""Keras 3.15's initializer names usable without arguments (a test compares with Keras)."""


class BuiltinModel(Section):
    """`model:` the built-in MLP: hidden layer sizes, activation, initializer, regularization."""

    units: list[PositiveInt] = Field(min_length=1)
    activation: str = "relu"
    kernel_initializer: str = "glorot_uniform"
    dropout: float = Field(default=0.0, ge=0, lt=1)
    l2: float = Field(default=0.0, ge=0)

    @field_validator("activation")
    @classmethod
    def _activation(cls, name: str) -> str:
        if name not in ACTIVATIONS:
            raise ValueError(f"expected a Keras activation name, got {name!r}")
        return name

    @field_validator("kernel_initializer")
    @classmethod
    def _initializer(cls, name: str) -> str:
        if name not in INITIALIZERS:
            raise ValueError(f"expected a Keras initializer name, got {name!r}")
        return name


class CustomModel(BaseModel):
    """`model: {_target_: package.module.build, ...}`: a user's builder (Hydra's convention).

    The callable gets `n_features`, `output` (a `data.tasks.OutputSpec`) and the other keys
    as keyword arguments, and returns an uncompiled `keras.Model`."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    target: str = Field(alias="_target_")

    @field_validator("target")
    @classmethod
    def _dotted(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][\w.]*\.[A-Za-z_]\w*", value):
            raise ValueError(f"expected a dotted path package.module.function, got {value!r}")
        return value

    @property
    def kwargs(self) -> dict[str, Any]:
        """The builder's keyword arguments: every key beside `_target_`."""
        return dict(self.model_extra or {})


def _model_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "custom" if "_target_" in value else "builtin"
    return "custom" if isinstance(value, CustomModel) else "builtin"


ModelParams = Annotated[
    Annotated[BuiltinModel, Tag("builtin")] | Annotated[CustomModel, Tag("custom")],
    Discriminator(_model_kind),
]
"""`model:` the built-in MLP, or a user's builder named by `_target_`."""


# --- train --------------------------------------------------------------------------------------


class RunParams(Section):
    """`train.baseline:` / `train.clr:` epochs, batch size (and the baseline's constant LR)."""

    epochs: PositiveInt
    batch_size: PositiveInt
    learning_rate: Positive | None = None


class TrainCommon(Reads):
    """The `train:` keys every training reads (both training stages, `compare`)."""

    seed: Integer
    momentum: float = Field(ge=0, lt=1)
    validation_fraction: float = Field(gt=0, lt=1)
    steps_per_execution: PositiveInt
    jit_compile: bool
    reshuffle: bool = False


class TrainParams(TrainCommon):
    """`train:` settings shared by both training stages, and each one's run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    baseline: RunParams
    clr: RunParams


# --- tracking -------------------------------------------------------------------------------------


class TrackingParams(Section):
    """`tracking:` where runs go."""

    uri: str = "sqlite:///mlflow.db"
    experiment: str = "clrpipe"
    enabled: bool = True


# --- registry -------------------------------------------------------------------------------------


class RegistryParams(Section):
    """`registry:` the name the training stages register their serving models under
    (`{dataset}` is the split's dataset name: `clrpipe-cardio`), and whether the `champion`
    stage moves the alias `champion` itself (false: only `clrpipe gate --promote` or
    `clrpipe promote` do)."""

    name: str = "clrpipe-{dataset}"
    promote: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[\w.-]+", value.replace("{dataset}", "x")):
            raise ValueError(f"expected letters, digits, '_', '.', '-' and {{dataset}}, "
                             f"got {value!r}")
        return value

    def model_name(self, dataset: str) -> str:
        """The registered model's name for the dataset `dataset`."""
        return self.name.replace("{dataset}", dataset)


class RegistryName(Reads):
    """The `registry.name` key alone: what the training stages register under."""

    name: str

    def model_name(self, dataset: str) -> str:
        """The registered model's name for the dataset `dataset`."""
        return self.name.replace("{dataset}", dataset)


def settle_auto_schedule(schedule: dict) -> dict:
    """`schedule:` without an `auto` half cycle where there is nothing to size: a policy
    without one (constant, one_cycle: the key goes) or a half cycle set in steps (`step_size`:
    the key becomes null). `data: table` sets `auto` whichever schedule is chosen."""
    if schedule.get("step_size_epochs") != AUTO:
        return schedule
    schedule = {**schedule}
    if schedule.get("policy", "triangular") not in get_args(
            CyclicalSchedule.model_fields["policy"].annotation):
        del schedule["step_size_epochs"]
    elif schedule.get("step_size") is not None:
        schedule["step_size_epochs"] = None
    return schedule


# --- the whole file -----------------------------------------------------------------------------


class Params(Section):
    """All of `params.yaml`: validated at once, before any stage starts its work. An `auto`
    at one of `AUTO_KEYS` is checked with a valid stand-in number (the stages that read those
    keys resolve `auto` first, with `data.sizing.resolve`); `auto` elsewhere is an error."""

    data: DataParams
    model: ModelParams
    schedule: ScheduleParams
    range_test: RangeTestParams
    train: TrainParams
    tracking: TrackingParams = TrackingParams()
    compare: CompareParams
    prepare: PrepareParams
    split: SplitParams
    registry: RegistryParams = RegistryParams()
    study: StudyParams | None = None

    @model_validator(mode="before")
    @classmethod
    def _auto(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = {**values}
        if isinstance(values.get("schedule"), dict):
            values["schedule"] = settle_auto_schedule(values["schedule"])
        for key, size in AUTO_KEYS.items():
            *parents, last = key.split(".")
            section = values
            for name in parents:  # copy the path down, so the caller's mapping stays as it was
                if not isinstance(section.get(name), dict):
                    break
                section[name] = section = {**section[name]}
            else:
                if section.get(last) == AUTO:
                    section[last] = _AUTO_STAND_INS[size]
        return values
