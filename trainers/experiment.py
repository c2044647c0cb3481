"""Experiment files: a named grid of trainers x hyperparameters x seeds, read from TOML or YAML.

Parsing only (no training, no daemon): ``load_experiment`` turns a file into a
validated ``Experiment`` or raises ``ExperimentFileError`` naming the file and
each bad key (``trainers[1]``, ``params.xgboost.max_depth``), so a typo never
silently trains the default instead. ``Experiment.grid()`` expands it into the
runs an experiment runner trains: per trainer, every combination of the values
its params list, for every seed. ``target`` (``direction``, the default, or
``return``) and ``horizon_bars`` (>= 1, default 1) say what every run predicts
(``trainers.targets``); ``metrics`` must be metrics of that target
(``METRICS_BY_TARGET``; default ``DEFAULT_METRICS``). Example (TOML)::

    name = "xgb-depth"
    trainers = ["xgboost"]
    seeds = [0, 1]
    metrics = ["accuracy", "roc_auc"]
    target = "direction"    # or "return": metrics then from rmse, r2, hit_rate...
    horizon_bars = 1

    [data]
    csv = "aapl_1h.csv"     # relative to this file; omit it to use the stored bars
    symbol = "AAPL"

    [params.xgboost]
    preset = "tiny"
    max_depth = [2, 4]      # a list is a grid axis
"""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final

import yaml  # type: ignore[import-untyped]  # no stubs in the venv; safe_load only
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from trainers.data import validate_symbol
from trainers.errors import InvalidInputError
from trainers.table import TRAINERS
from trainers.targets import DIRECTION, RETURN, Target

FORMATS: Final = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml"}
"""File extension -> format; anything else is refused."""
METRIC_NAMES: Final = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "roc_auc",
    "log_loss",
    "brier",
    "positive_rate",
    "base_rate",
    "directional_accuracy",
)
"""What ``metrics`` may name for a direction target: the keys of
``trainers.metrics.classification_metrics`` but n."""
REGRESSION_METRIC_NAMES: Final = ("rmse", "mae", "mape", "r2", "pearson", "spearman", "hit_rate")
"""... for a return target: the keys of ``trainers.regression_metrics.regression_metrics`` but n."""
METRICS_BY_TARGET: Final[dict[Target, tuple[str, ...]]] = {
    DIRECTION: METRIC_NAMES,
    RETURN: REGRESSION_METRIC_NAMES,
}
DEFAULT_METRICS: Final[dict[Target, tuple[str, ...]]] = {
    DIRECTION: ("accuracy", "roc_auc", "log_loss"),
    RETURN: ("rmse", "r2", "hit_rate"),
}
PRIMARY_METRIC: Final[dict[Target, str]] = {DIRECTION: "accuracy", RETURN: "rmse"}
"""The metric that ranks runs ("most accurate"): test accuracy, or the lowest test RMSE."""
MAX_GRID_POINTS: Final = 256
"""A grid larger than this is almost always a typo (a list where a value was meant)."""

Scalar = bool | int | float | str


class ExperimentFileError(InvalidInputError):
    """An experiment file that cannot be read or is invalid; ``problems`` name each key."""

    def __init__(self, path: Path, problems: Sequence[str]) -> None:
        self.path, self.problems = Path(path), list(problems)
        InvalidInputError.__init__(
            self, f"{path}: invalid experiment file:\n  " + "\n  ".join(self.problems)
        )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataSource(_Strict):
    """The bars every run trains on: a CSV file, or (no ``csv``) the symbol's stored bars."""

    symbol: str
    csv: str | None = Field(default=None, min_length=1)
    last_bars: int | None = Field(default=None, ge=50)
    """Only the newest this many bars (default: all)."""

    @field_validator("symbol")
    @classmethod
    def _symbol_valid(cls, value: str) -> str:
        return validate_symbol(value)


class Splits(_Strict):
    """Overrides of the chronological split and walk-forward folds (default: the settings')."""

    val_fraction: float | None = Field(default=None, gt=0, lt=0.5)
    test_fraction: float | None = Field(default=None, gt=0, lt=0.5)
    walk_forward_folds: int | None = Field(default=None, ge=0)

    @field_validator("walk_forward_folds")
    @classmethod
    def _folds(cls, value: int | None) -> int | None:
        if value == 1:
            raise ValueError("must be 0 (off) or at least 2, got 1")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Splits:
        if (self.val_fraction or 0) + (self.test_fraction or 0) >= 0.8:
            raise ValueError("val_fraction + test_fraction must leave at least 20% for training")
        return self


class Gates(_Strict):
    """Overrides of ``monitors.gates.GateConfig`` fields (default: the settings')."""

    max_train_val_gap: float | None = Field(default=None, gt=0, le=1)
    max_val_test_diff: float | None = Field(default=None, gt=0, le=1)
    val_test_alpha: float | None = Field(default=None, gt=0, le=1)
    require_beat_baseline: bool | None = None
    max_parity_diff: float | None = Field(default=None, gt=0)
    baseline_alpha: float | None = Field(default=None, gt=0, lt=1)
    min_test_rows: int | None = Field(default=None, ge=1)
    max_fold_accuracy_std: float | None = Field(default=None, gt=0)
    min_test_accuracy: float | None = Field(default=None, gt=0, lt=1)

    def overrides(self) -> dict[str, Any]:
        """Only the fields the file set."""
        return {name: getattr(self, name) for name in sorted(self.model_fields_set)}


@dataclass(frozen=True, slots=True)
class GridPoint:
    """One run of the experiment: one trainer with one set of params and one seed."""

    index: int
    trainer: str
    params: Mapping[str, Scalar]
    seed: int
    label: str
    """Short and path-safe: trainer, the values that vary, seed (``xgboost-max_depth=4-s1``)."""


class Experiment(_Strict):
    """A validated experiment file."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    description: str = ""
    tags: dict[str, str] = {}
    data: DataSource
    trainers: Annotated[list[str], Field(min_length=1)]
    params: dict[str, dict[str, Any]] = {}
    """Per trainer, keyword -> value or list of values (a grid axis)."""
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] = [0]
    target: Target = DIRECTION
    horizon_bars: int = Field(default=1, ge=1)
    metrics: Annotated[list[str], Field(min_length=1)] = list(DEFAULT_METRICS[DIRECTION])
    """Default: ``DEFAULT_METRICS`` of the file's target."""
    splits: Splits = Splits()
    gates: Gates = Gates()

    @model_validator(mode="before")
    @classmethod
    def _target_metrics(cls, data: Any) -> Any:
        """Without ``metrics``, report the defaults of the file's target."""
        if isinstance(data, Mapping) and "metrics" not in data:
            target = data.get("target", DIRECTION)
            if target in DEFAULT_METRICS:
                return {**data, "metrics": list(DEFAULT_METRICS[target])}
        return data

    @property
    def primary_metric(self) -> str:
        """``PRIMARY_METRIC`` of the target: what ranks the runs."""
        return PRIMARY_METRIC[self.target]

    @model_validator(mode="after")
    def _names_known(self) -> Experiment:
        problems = []
        for i, name in enumerate(self.trainers):
            if name not in TRAINERS:
                problems.append(
                    f"trainers[{i}]: unknown trainer {name!r}; valid: {', '.join(sorted(TRAINERS))}"
                )
            elif name in self.trainers[:i]:
                problems.append(f"trainers[{i}]: {name!r} is listed twice")
        for i, seed in enumerate(self.seeds):
            if seed in self.seeds[:i]:
                problems.append(f"seeds[{i}]: {seed} is listed twice")
        valid = METRICS_BY_TARGET[self.target]
        for i, metric in enumerate(self.metrics):
            if metric not in valid:
                problems.append(
                    f"metrics[{i}]: unknown metric {metric!r} for target {self.target!r}; "
                    f"valid: {', '.join(valid)}"
                )
        for trainer, params in self.params.items():
            if trainer not in self.trainers:
                problems.append(f"params.{trainer}: {trainer!r} is not in trainers")
            for key, value in params.items():
                problems += _param_problems(f"params.{trainer}.{key}", value)
        if not problems and len(self.grid()) > MAX_GRID_POINTS:
            problems.append(f"the grid has {len(self.grid())} runs, at most {MAX_GRID_POINTS}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def grid(self) -> list[GridPoint]:
        """Every run, in file order: trainer, then its params combinations, then seed."""
        points: list[GridPoint] = []
        for trainer in self.trainers:
            params = self.params.get(trainer, {})
            axes = {k: v if isinstance(v, list) else [v] for k, v in params.items()}
            varying = [k for k, values in axes.items() if len(values) > 1]
            for combo in itertools.product(*axes.values()):
                chosen = dict(zip(axes, combo, strict=True))
                for seed in self.seeds:
                    parts = [trainer, *(f"{k}={chosen[k]}" for k in varying), f"s{seed}"]
                    points.append(
                        GridPoint(len(points), trainer, chosen, seed, _path_safe("-".join(parts)))
                    )
        return points


def _param_problems(key: str, value: object) -> list[str]:
    def scalar(v: object) -> bool:
        return isinstance(v, bool | int | float | str)

    if isinstance(value, list):
        if not value:
            return [f"{key}: an empty list gives no runs"]
        return [
            f"{key}[{i}]: must be a number, string or boolean, got {type(v).__name__}"
            for i, v in enumerate(value)
            if not scalar(v)
        ]
    if not scalar(value):
        return [
            f"{key}: must be a number, string, boolean or a list of them, "
            f"got {type(value).__name__}"
        ]
    return []


def _path_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)[:80]


def load_experiment(path: Path) -> Experiment:
    """Read and validate an experiment file; its format is its extension (.toml, .yaml, .yml).

    Raises ``ExperimentFileError`` (an ``InvalidInputError``) naming the file and every
    problem: a missing file, another extension, a syntax error (with its line), an
    unknown key, a wrong type or value.
    """
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ExperimentFileError(
            path, [f"unknown format {path.suffix or '(no extension)'!r}; use {', '.join(FORMATS)}"]
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExperimentFileError(path, [f"cannot read it: {exc}"]) from None
    return parse_experiment(text, kind, path)


def parse_experiment(text: str, kind: str, path: Path) -> Experiment:
    """``load_experiment`` of text already read (``kind``: toml or yaml; ``path`` for messages)."""
    document: object
    try:
        document = tomllib.loads(text) if kind == "toml" else yaml.safe_load(text)
    except tomllib.TOMLDecodeError as exc:
        raise ExperimentFileError(path, [f"TOML syntax error: {exc}"]) from None
    except yaml.YAMLError as exc:
        raise ExperimentFileError(path, [f"YAML syntax error: {_yaml_problem(exc)}"]) from None
    if not isinstance(document, dict):
        got = "nothing" if document is None else type(document).__name__
        raise ExperimentFileError(path, [f"expected a table of keys at the top level, got {got}"])
    try:
        return Experiment.model_validate(document)
    except ValidationError as exc:
        raise ExperimentFileError(path, _problems(exc)) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return str(problem)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _problems(exc: ValidationError) -> list[str]:
    """One line per error: ``key: what is wrong``, keys written as in the file."""
    problems: list[str] = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(loc[:-1])
            message = "unknown key" + (f"; valid keys: {', '.join(valid)}" if valid else "")
        elif err["type"] == "missing":
            message = "required key is missing"
        elif "input" in err and err["type"] not in ("value_error", "assertion_error"):
            message = f"{message} (got {err['input']!r})"
        key = _key(loc)
        for line in message.split("\n"):
            # Cross-field rules name their key in their own message.
            named = key and not line.startswith(f"{key}.") and not line.startswith(f"{key}[")
            problems.append(f"{key}: {line}" if named else line)
    return problems


def _key(loc: tuple[int | str, ...]) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _valid_keys(loc: tuple[int | str, ...]) -> list[str]:
    model: type[BaseModel] = Experiment
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
