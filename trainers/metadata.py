# Over 400 lines: every record of metadata.json in one module, read and written in one place.
"""The typed record of a trained model: what ``metadata.json`` holds, read and written once here.

The training pipeline builds a ``ModelMetadata``; the registry stores it as
``metadata.json`` and hands it back typed; live scoring, the monitors, the
operator tools and the reports read its fields, never raw JSON. Every
candidate of the run is a ``CandidateRecord`` (the chosen one's fields are
repeated at the top level, as the file has always had them).

``schema_version`` is written into every file and checked on read: a file of
an unknown version raises ``MetadataError`` naming the file. Files written
before the field existed have exactly the layout of version 1 and are read as
version 1.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    ValidationError,
    model_serializer,
    model_validator,
)

from monitors.base import MonitorWarning
from monitors.drift import FeatureReference
from monitors.gates import GateConfig, GateVerdict
from trainers.errors import MetadataError
from trainers.features import FeatureSpec
from trainers.targets import DIRECTION, RETURN, Target

SCHEMA_VERSION: Final = 1
"""Layout of metadata.json this code reads and writes."""

Metrics = dict[str, float | int | None]
"""One split's metrics by name (``trainers.metrics.classification_metrics``, or
``trainers.regression_metrics.regression_metrics`` for a return target)."""
Params = dict[str, object]
"""A trainer's hyperparameters as recorded (JSON values)."""


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _reference(value: object) -> object:
    return FeatureReference.from_dict(value) if isinstance(value, Mapping) else value


Reference = Annotated[
    FeatureReference, BeforeValidator(_reference), PlainSerializer(lambda r: r.to_dict())
]


class SplitMetrics(_Record):
    """Metrics of the train, validation and test parts."""

    train: Metrics
    val: Metrics
    test: Metrics


class DataRange(_Record):
    """The bars a model was trained on."""

    n_bars: int
    first_ts: int | None
    last_ts: int | None
    n_rows: int
    sha256: str
    excluded_rows: int = 0
    """Rows left out because a feature was not finite in float32 (``TrainingMatrix``)."""
    excluded_first_ts: int | None = None
    """The bar of the first excluded row; the bad bar is at most a lookback before it."""


class Rows(_Record):
    """Row ranges ``[start, stop)`` of each part of a split, and the embargo between them."""

    train: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int]
    embargo: int


class SplitRecord(Rows):
    """The run's own split: its rows and the fractions it was made with."""

    val_fraction: float
    test_fraction: float


class OnnxInfo(_Record):
    """What a consumer of model.onnx needs to feed it (``window`` 1: rows, else windows)."""

    path: str
    input: str
    output: str
    n_features: int
    window: int
    parity_max_abs_diff: float
    sha256: str | None = None
    """Of model.onnx; the registry checks it on every copy (None in models from before 2026-12)."""


class CandidateError(_Record):
    """Why a candidate failed, and at which stage of its run."""

    stage: str
    type: str
    message: str


class BaselineComparison(_Record):
    """Candidate vs the yardstick baseline on the out-of-sample rows: discordant pairs, sign test.

    ``rows`` pools the test split and the earlier walk-forward test blocks
    (``blocks`` of them); records from before 2026-12 compared the test split
    with the majority class only and lack the first three fields.
    """

    baseline: str = "naive"
    rows: int | None = None
    blocks: int = 1
    candidate_only: int
    baseline_only: int
    p_value: float
    test: str | None = None
    """``diebold_mariano`` for a return target: ``candidate_only`` / ``baseline_only`` then
    count the rows where only that side's squared error is lower, ``p_value`` is the
    one-sided Diebold-Mariano p-value (HAC lag ``horizon - 1``) of ``statistic``, and the
    two MSEs are over ``rows``. None (and the four fields absent from the file): the
    direction sign test."""
    statistic: float | None = None
    horizon: int | None = None
    candidate_mse: float | None = None
    baseline_mse: float | None = None

    @model_serializer(mode="wrap")
    def _drop_unset_loss_fields(self, handler: Any) -> dict[str, Any]:
        # A direction record keeps exactly the keys it has always had.
        out: dict[str, Any] = handler(self)
        for key in ("test", "statistic", "horizon", "candidate_mse", "baseline_mse"):
            if out.get(key) is None:
                out.pop(key, None)
        return out


class FoldRecord(_Record):
    split: Rows
    test: Metrics
    refit: bool
    warnings: tuple[MonitorWarning, ...] = ()


class FoldError(_Record):
    fold: int
    type: str
    message: str


class MeanStd(_Record):
    mean: float | None
    std: float | None


class WalkForwardRecord(_Record):
    """Per-fold test metrics and, per metric, mean and sample std over the folds.

    In the file the statistics sit beside the other keys (``"accuracy": {"mean",
    "std"}``); here they are ``stats``. ``skipped``: why no folds ran (data too
    small); ``error``: the fold whose fit failed (statistics left out then).
    """

    folds: int
    skipped: str | None = None
    error: FoldError | None = None
    per_fold: tuple[FoldRecord, ...] = ()
    stats: dict[str, MeanStd] = {}

    @model_validator(mode="before")
    @classmethod
    def _gather_stats(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or "stats" in data:
            return data
        fixed = {"folds", "skipped", "error", "per_fold"}
        out = {k: v for k, v in data.items() if k in fixed}
        out["stats"] = {k: v for k, v in data.items() if k not in fixed}
        return out

    @model_serializer(mode="wrap")
    def _spread_stats(self, handler: Any) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        return {**{k: v for k, v in out.items() if k != "stats"}, **out["stats"]}

    @property
    def accuracy_std(self) -> float | None:
        """The test-accuracy std the fold-stability gate judges; None when not measured."""
        accuracy = self.stats.get("accuracy")
        return None if accuracy is None else accuracy.std


class BaselineRecord(_Record):
    trainer: str
    params: Params
    metrics: SplitMetrics


class CandidateRecord(_Record):
    """One candidate of a run: its model, metrics, gates, warnings, or the error that ended it."""

    trainer: str
    params: Params
    window: int | None = None
    metrics: SplitMetrics | None = None
    walk_forward: WalkForwardRecord | None = None
    gates: tuple[GateVerdict, ...] = ()
    parity_max_abs_diff: float | None = None
    warnings: tuple[MonitorWarning, ...] = ()
    n_params: int | None = None
    timings: dict[str, float] = {}
    score: float | None = None
    passed: bool = False
    error: CandidateError | None = None
    baseline_comparison: BaselineComparison | None = None

    @property
    def test_accuracy(self) -> float | None:
        return None if self.metrics is None else self.metrics.test.get("accuracy")

    @property
    def failed_gates(self) -> tuple[GateVerdict, ...]:
        return tuple(g for g in self.gates if not g.passed)


class PairedTestRecord(_Record):
    """Candidates ``a`` and ``b`` on the same test rows (``trainers.comparison.PairedTest``).

    ``test``: ``mcnemar`` (direction: rows only one got right) or ``diebold_mariano``
    (per-row log loss). ``statistic`` and ``effect`` > 0 favour ``a``; ``p_value``
    is two-sided.
    """

    a: str
    b: str
    test: str
    statistic: float
    p_value: float
    rows: int
    a_wins: int
    b_wins: int
    effect: float


class FriedmanRecord(_Record):
    """Friedman's test and Nemenyi's post-hoc over the walk-forward test blocks.

    ``accuracy[i][j]``: candidate ``j``'s accuracy on block ``i`` (first row
    ``block_starts[i]``). ``mean_ranks``: 1 is best. ``differ``: pairs more than
    ``critical_difference`` apart in mean rank, when Friedman rejects at ``alpha``.
    """

    candidates: tuple[str, ...]
    block_starts: tuple[int, ...]
    accuracy: tuple[tuple[float, ...], ...]
    mean_ranks: tuple[float, ...]
    statistic: float
    f_statistic: float | None = None
    p_value: float
    method: str
    alpha: float
    critical_difference: float
    differ: tuple[tuple[str, str], ...] = ()


class SelectionRecord(_Record):
    """How the served candidate was chosen, and whether the most accurate one differs.

    ``tests``: McNemar and Diebold-Mariano of ``chosen`` (a) against
    ``most_accurate`` (b) on the test split, when they are not the same;
    ``significant``: McNemar's p-value below the comparison's alpha (None: no test).
    """

    rule: str
    chosen: str | None = None
    most_accurate: str | None = None
    tests: tuple[PairedTestRecord, ...] = ()
    significant: bool | None = None


class ComparisonRecord(_Record):
    """The scored candidates compared with each other (``trainers.selection``).

    ``paired``: every pair on the test split's ``test_rows``; ``friedman``: across
    walk-forward blocks, None with ``friedman_skipped`` saying why.
    """

    alpha: float
    test_rows: int
    candidates: tuple[str, ...] = ()
    paired: tuple[PairedTestRecord, ...] = ()
    friedman: FriedmanRecord | None = None
    friedman_skipped: str | None = None
    selection: SelectionRecord


class ModelMetadata(_Record):
    """Everything recorded about one training run of a symbol (``metadata.json``).

    The chosen candidate's trainer, params, metrics, walk-forward record,
    gates, warnings and ONNX contract are at the top level (None / empty when
    no candidate passed); ``candidates`` has every candidate. ``version`` is
    set by the registry when the run becomes a version.
    """

    schema_version: int = SCHEMA_VERSION
    symbol: str
    version: str | None = None
    target: Target = DIRECTION
    """What the model predicts (``trainers.targets``); files from before targets are
    direction models. The horizon is ``feature_spec.label_horizon``."""
    trainer: str | None
    params: Params | None
    seed: int
    data: DataRange
    feature_spec: FeatureSpec
    feature_reference: Reference
    split: SplitRecord
    metrics: SplitMetrics | None
    walk_forward: WalkForwardRecord | None
    baseline: BaselineRecord
    """The yardstick: the naive baseline more accurate on validation."""
    baselines: tuple[BaselineRecord, ...] = ()
    """Every naive baseline of the run (majority class, persistence); empty before 2026-12."""
    candidates: tuple[CandidateRecord, ...]
    gates: tuple[GateVerdict, ...]
    warnings: tuple[MonitorWarning, ...]
    onnx: OnnxInfo | None
    gate_config: GateConfig
    config: dict[str, object]
    config_sha256: str
    timings: dict[str, float]
    code_version: dict[str, str | None]
    created_at: str
    passed: bool
    reason: str
    comparison: ComparisonRecord | None = None
    """Paired tests between the candidates and the selection rule; None before 2026-12."""

    @property
    def test_accuracy(self) -> float | None:
        """The chosen model's test accuracy; None when no candidate passed."""
        return None if self.metrics is None else self.metrics.test.get("accuracy")

    @property
    def test_hit_rate(self) -> float | None:
        """The chosen model's test share of directions called right (``targets.hit``): its
        accuracy, or a return model's ``hit_rate``; None when no candidate passed."""
        key = "hit_rate" if self.target == RETURN else "accuracy"
        return None if self.metrics is None else self.metrics.test.get(key)

    @property
    def baseline_test_accuracy(self) -> float | None:
        return self.baseline.metrics.test.get("accuracy")

    @property
    def trained_until(self) -> int | None:
        """Timestamp of the newest bar the model was trained on."""
        return self.data.last_ts

    @property
    def created_ts(self) -> float:
        """``created_at`` as Unix seconds."""
        return datetime.fromisoformat(self.created_at.replace("Z", "+00:00")).timestamp()

    @property
    def chosen(self) -> CandidateRecord | None:
        """The candidate that became the model, if any passed."""
        if not self.passed:
            return None
        return next((c for c in self.candidates if c.passed and c.trainer == self.trainer), None)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document, key for key as metadata.json holds it (JSON has no NaN or
        infinity: such values are null)."""
        out: dict[str, Any] = json.loads(self.model_dump_json(exclude_none=False))
        if out["version"] is None:
            del out["version"]
        return out

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False).encode() + b"\n"

    @classmethod
    def from_dict(cls, doc: object, source: str | Path = "metadata") -> ModelMetadata:
        """Validate a parsed document; MetadataError names ``source`` and the bad field."""
        if not isinstance(doc, Mapping):
            raise MetadataError(source, "not a JSON object")
        version = doc.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise MetadataError(
                source,
                f"schema_version {version!r} is not one this ctd reads ({SCHEMA_VERSION}); "
                "it was written by another release of ctd",
            )
        try:
            return cls.model_validate({**doc, "schema_version": SCHEMA_VERSION})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "document"
            raise MetadataError(source, f"field {where}: {first['msg']}") from None

    @classmethod
    def from_json(cls, data: bytes, source: str | Path = "metadata") -> ModelMetadata:
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise MetadataError(source, f"not JSON: {exc}") from None
        return cls.from_dict(doc, source)
