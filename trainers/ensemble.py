"""The ``ensemble`` candidate: the run's passing candidates combined into one ONNX model.

It runs after the other candidates of ``train_symbol`` and is gated like any of
them (``trainers.candidate.judge``): metrics of the exported graph, parity,
the paired baseline test, the same ``GateConfig``. Its members are the
candidates that passed every gate (at least ``MIN_MEMBERS``); their
``model.onnx`` graphs are composed into one (``trainers.onnx_compose``), so
live scoring serves it like any model.

Methods (``trainer_params={"ensemble": {"method": ...}}``):

- ``soft_vote`` (default): the mean of the members' P(up). Nothing is fitted,
  so every walk-forward test block all members predicted is out of sample for
  it too: it is judged on the pooled blocks, three times the test split's rows
  with three folds, which is what the significance gate needs. With a few
  hundred validation rows, fitted weights are mostly noise and equal weights
  are hard to beat (the forecast-combination puzzle); hence the default.
- ``val_weighted``: weights proportional to each member's log-loss skill on
  validation over the base-rate forecast (``1 - loss / base loss``, negative
  skill weighs 0; equal weights when no member has skill). Log loss uses every
  row's probability, not only its side of 0.5, so it is less noisy than an
  accuracy edge on the same rows.
- ``stacking``: a logistic regression on the members' validation logits,
  L2-shrunk towards the logit average (``STACKING_L2``), fitted by Newton's
  method: deterministic, no solver randomness.

For a ``return`` target (``trainers.targets``; every member shares the run's target,
as every candidate is trained on the same ``Dataset``) the members predict forward
returns and the graph outputs ``prediction``:

- ``soft_vote``: the mean of the members' predicted returns;
- ``val_weighted``: weights proportional to each member's validation MSE skill over
  predicting the validation mean (``1 - MSE / MSE(mean)``, clipped at 0; equal
  weights when no member has skill);
- ``stacking``: a linear regression of the validation returns on the members'
  predictions with an intercept, ridge-shrunk towards equal weights
  (``STACKING_RIDGE``), solved in closed form.

The fitted methods see validation labels, and validation comes after every
earlier walk-forward block: judged there, their weights would have looked
ahead. They are judged on the test split alone (``Yardstick.test_split_only``),
and their walk-forward record says why it is missing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from trainers.baselines import Yardstick
from trainers.candidate import CandidateRun, Predictions, finish, judge
from trainers.config import ENSEMBLE, TrainConfig, json_safe
from trainers.dataset import Dataset
from trainers.errors import InvalidInputError
from trainers.evaluation import split_metrics
from trainers.metadata import (
    CandidateError,
    FoldRecord,
    MeanStd,
    OnnxInfo,
    WalkForwardRecord,
)
from trainers.metrics import PROBA_CLIP, classification_metrics
from trainers.onnx_compose import Combiner, Member, compose, logits
from trainers.onnx_io import OnnxScorer
from trainers.regression_metrics import regression_metrics
from trainers.targets import DIRECTION, RETURN, Target

FloatArray = npt.NDArray[np.float64]

METHODS: Final = ("soft_vote", "val_weighted", "stacking")
DEFAULT_METHOD: Final = "soft_vote"
MIN_MEMBERS: Final = 2
STACKING_L2: Final = 1.0
"""Penalty of ``STACKING_L2 / 2 x |w - 1/k|^2`` on the stacking weights, in units of the
summed validation log loss: a few hundred rows move them, a handful cannot."""
STACKING_RIDGE: Final = 1.0
"""Ridge penalty of the return stacking, ``STACKING_RIDGE x trace(Z'Z) / k`` on ``|w - 1/k|^2``
(Z: the members' centred validation predictions): scale-free, as returns are ~1e-3; at 1
the equal-weight prior counts as much as one member's own variation, which keeps the
collinear predictions of similar members from trading huge opposite weights."""
_NEWTON_STEPS: Final = 50
_NEWTON_TOL: Final = 1e-10
_INTERCEPT_L2: Final = 1e-6  # keeps the intercept finite when validation has one class


class _Joined(NamedTuple):
    """A member: its candidate run, out-of-sample predictions and ONNX file."""

    run: CandidateRun
    predictions: Predictions
    path: Path


def ensemble_method(params: Mapping[str, object]) -> str:
    """The ``method`` in ``params`` (default ``DEFAULT_METHOD``); ``InvalidInputError`` names
    an unknown key or method."""
    unknown = sorted(set(params) - {"method"})
    if unknown:
        raise InvalidInputError(
            f"{ENSEMBLE}: unknown parameter(s) {', '.join(unknown)}; valid: method"
        )
    method = params.get("method", DEFAULT_METHOD)
    if method not in METHODS:
        raise InvalidInputError(
            f"{ENSEMBLE}: unknown method {method!r}; valid methods: {', '.join(METHODS)}"
        )
    return str(method)


def fit_combiner(
    method: str, val_p: FloatArray, y_val: npt.ArrayLike, target: Target = DIRECTION
) -> Combiner:
    """The combiner of ``method`` from the members' validation predictions ``(n, k)`` and
    labels: P(up) and 0/1 (``direction``), or predicted and realised returns (``return``)."""
    p = np.asarray(val_p, dtype=np.float64)
    y = np.asarray(y_val, dtype=np.float64)
    k = p.shape[1]
    if method == "soft_vote":
        return Combiner("mean", (1.0 / k,) * k)
    if target == RETURN:
        if method == "val_weighted":
            return Combiner("mean", _mse_skill_weights(p, y))
        if method == "stacking":
            weights, intercept = _ridge(p, y, STACKING_RIDGE)
            return Combiner("linear", weights, intercept)
    if method == "val_weighted":
        return Combiner("mean", _skill_weights(p, y))
    if method == "stacking":
        weights, intercept = _stack(logits(p), y, STACKING_L2)
        return Combiner("logistic", weights, intercept)
    raise InvalidInputError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")


def _log_loss(y: FloatArray, p: FloatArray) -> float:
    q = np.clip(p, PROBA_CLIP, 1.0 - PROBA_CLIP)
    return float(-np.mean(y * np.log(q) + (1.0 - y) * np.log1p(-q)))


def _skill_weights(p: FloatArray, y: FloatArray) -> tuple[float, ...]:
    """Weights proportional to each column's log-loss skill over the base rate, clipped at 0."""
    k = int(p.shape[1])
    equal = (1.0 / k,) * k
    base = _log_loss(y, np.full(len(y), float(np.mean(y))))
    if not base > 0.0:  # one class in validation: no skill to measure
        return equal
    skill = np.array([max(0.0, 1.0 - _log_loss(y, p[:, j]) / base) for j in range(k)])
    if not skill.sum() > 0.0:
        return equal
    return tuple(float(w) for w in skill / skill.sum())


def _mse_skill_weights(r: FloatArray, y: FloatArray) -> tuple[float, ...]:
    """Weights proportional to each column's MSE skill over the mean of ``y``, clipped at 0."""
    k = int(r.shape[1])
    equal = (1.0 / k,) * k
    base = float(np.mean((y - np.mean(y)) ** 2))
    if not base > 0.0:  # constant validation returns: no skill to measure
        return equal
    skill = np.array([max(0.0, 1.0 - float(np.mean((r[:, j] - y) ** 2)) / base) for j in range(k)])
    if not skill.sum() > 0.0:
        return equal
    return tuple(float(w) for w in skill / skill.sum())


def _ridge(r: FloatArray, y: FloatArray, ridge: float) -> tuple[tuple[float, ...], float]:
    """Least squares of ``y`` on ``r`` with an intercept, weights shrunk towards ``1/k``.

    Closed form on centred data; the intercept is not penalised. Members whose
    validation predictions do not vary get the prior weights. Returns (weights, intercept).
    """
    k = int(r.shape[1])
    prior = np.full(k, 1.0 / k)
    mean_r, mean_y = r.mean(axis=0), float(np.mean(y))
    z = r - mean_r
    gram = z.T @ z
    penalty = ridge * float(np.trace(gram)) / k
    if not penalty > 0.0:
        w = prior
    else:
        w = np.linalg.solve(gram + penalty * np.eye(k), z.T @ (y - mean_y) + penalty * prior)
    return tuple(float(v) for v in w), mean_y - float(mean_r @ w)


def _stack(z: FloatArray, y: FloatArray, l2: float) -> tuple[tuple[float, ...], float]:
    """L2-penalised logistic regression of ``y`` on ``z`` by Newton's method.

    The weights are shrunk towards ``1/k`` each (the logit average), the intercept
    (almost) not at all. Returns (weights, intercept).
    """
    n, k = z.shape
    x = np.column_stack([z, np.ones(n)])
    prior = np.append(np.full(k, 1.0 / k), 0.0)
    penalty = np.append(np.full(k, l2), _INTERCEPT_L2)
    beta = prior.copy()
    for _ in range(_NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        grad = x.T @ (p - y) + penalty * (beta - prior)
        hess = (x.T * (p * (1.0 - p))) @ x + np.diag(penalty)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if float(np.max(np.abs(step))) < _NEWTON_TOL:
            break
    return tuple(float(b) for b in beta[:k]), float(beta[k])


def run_ensemble(
    index: int,
    runs: Sequence[CandidateRun],
    *,
    config: TrainConfig,
    data: Dataset,
    fwd_returns: FloatArray,
    yardstick: Yardstick,
    out_dir: Path,
) -> CandidateRun:
    """Combine the passing ``runs``, export, check parity, score and gate; errors are recorded.

    ``yardstick`` is the run's (pooled blocks); the fitted methods are judged on
    its test split only. Parity is max |ensemble ONNX - ``Combiner.combine`` of
    the members' own ONNX outputs| on the test inputs.
    """
    params = dict(config.trainer_params.get(ENSEMBLE, {}))
    path = out_dir / f".candidate-{index}.onnx"
    fields: dict[str, object] = {"trainer": ENSEMBLE, "params": json_safe(params)}
    timings: dict[str, float] = {}
    onnx: OnnxInfo | None = None
    predictions: Predictions | None = None
    stage = "init"
    try:
        method = ensemble_method(params)
        stage = "members"
        members = _members(runs)
        started = time.perf_counter()
        combiner = fit_combiner(
            method, np.column_stack([m.predictions.val for m in members]), data.y_val, data.target
        )
        timings["fit_seconds"] = time.perf_counter() - started
        pooled = method == "soft_vote"
        fields["params"] = json_safe(
            {
                "method": method,
                "members": [m.run.record.trainer for m in members],
                "weights": list(combiner.weights),
                **({"intercept": combiner.intercept} if combiner.kind != "mean" else {}),
                "judged_on": "test split and walk-forward blocks" if pooled else "test split",
            }
        )
        fields["n_params"] = sum(m.run.record.n_params or 0 for m in members) + len(
            combiner.weights
        )

        stage = "export"
        started = time.perf_counter()
        compose([Member.load(m.path) for m in members], combiner, path)
        scorer = OnnxScorer(path)
        timings["export_seconds"] = time.perf_counter() - started
        fields["window"] = scorer.window

        stage = "parity"
        test_x = data.inputs("test", scorer.window)
        test_p = scorer.predict(test_x)
        own = [OnnxScorer(m.path) for m in members]
        reference = combiner.combine(
            np.column_stack([s.predict(data.inputs("test", s.window)) for s in own])
        )
        parity = float(np.max(np.abs(test_p - reference)))
        fields["parity_max_abs_diff"] = parity

        stage = "metrics"
        metrics = split_metrics(scorer.predict, data, fwd_returns, window=scorer.window)
        fields["metrics"] = metrics
        blocks = {data.split.test.start: test_p}

        stage = "walk_forward"
        wf = None
        if pooled:
            wf = _walk_forward(members, combiner, data, fwd_returns, blocks=blocks, config=config)
        if not pooled and config.walk_forward_folds:
            wf = WalkForwardRecord(
                folds=config.walk_forward_folds,
                skipped=f"{method} weights are fit on validation, which comes after every "
                "earlier test block: judged there they would have looked ahead",
            )
        fields["walk_forward"] = wf
        predictions = Predictions(scorer.predict(data.inputs("val", scorer.window)), blocks)

        stage = "gates"
        onnx = judge(
            fields,
            scorer=scorer,
            parity=parity,
            metrics=metrics,
            blocks=blocks,
            walk_forward=wf,
            warning_kinds=(),  # each member passed its own training-health gate
            config=config,
            data=data,
            yardstick=yardstick if pooled else yardstick.test_split_only(data),
        )
    except Exception as exc:  # a broken ensemble must not sink the candidates
        fields["error"] = CandidateError(stage=stage, type=type(exc).__name__, message=str(exc))
    return finish(
        fields, timings=timings, warnings=(), path=path, onnx=onnx, predictions=predictions
    )


def _members(runs: Sequence[CandidateRun]) -> list[_Joined]:
    """The runs that passed every gate, with their predictions and ONNX files."""
    out = [
        _Joined(r, r.predictions, r.path)
        for r in runs
        if r.record.passed and r.predictions is not None and r.path is not None
    ]
    if len(out) < MIN_MEMBERS:
        names = ", ".join(m.run.record.trainer for m in out) or "none"
        raise InvalidInputError(
            f"needs at least {MIN_MEMBERS} passing candidates, got {len(out)}: {names}"
        )
    return out


def _walk_forward(
    members: Sequence[_Joined],
    combiner: Combiner,
    data: Dataset,
    fwd_returns: FloatArray,
    *,
    blocks: dict[int, FloatArray],
    config: TrainConfig,
) -> WalkForwardRecord | None:
    """The members' walk-forward folds, each test block scored by the combination.

    Earlier blocks combine the members' refitted predictions and are added to
    ``blocks``; the last fold is the run's split, scored by the ensemble graph.
    A fold some member did not predict leaves the statistics out (``skipped``).
    """
    if not config.walk_forward_folds:
        return None
    first = members[0].run.record.walk_forward
    folds = config.walk_forward_folds
    if first is None or not first.per_fold or first.skipped or first.error:
        return WalkForwardRecord(folds=folds, skipped="the members have no walk-forward folds")
    per_fold: list[FoldRecord] = []
    for fold in first.per_fold:
        start, stop = fold.split.test
        if start == data.split.test.start:
            proba = blocks[start]
        else:
            found = [m.predictions.blocks.get(start) for m in members]
            if any(b is None or len(b) != stop - start for b in found):
                return WalkForwardRecord(
                    folds=folds, skipped=f"a member has no prediction for the block at row {start}"
                )
            proba = combiner.combine(np.column_stack([b for b in found if b is not None]))
            blocks[start] = proba
        metrics = _metrics(data.target, data.labels[start:stop], proba, fwd_returns[start:stop])
        per_fold.append(FoldRecord(split=fold.split, test=metrics, refit=fold.refit))
    stats = {
        key: _mean_std([f.test[key] for f in per_fold]) for key in per_fold[0].test if key != "n"
    }
    return WalkForwardRecord(folds=folds, per_fold=tuple(per_fold), stats=stats)


def _metrics(
    target: Target, y: FloatArray, pred: FloatArray, fwd_returns: FloatArray
) -> dict[str, float | None]:
    """One block's metrics as ``trainers.evaluation.split_metrics`` computes them for ``target``."""
    if target == RETURN:
        return regression_metrics(y, pred)
    return classification_metrics(y, pred, fwd_returns)


def _mean_std(values: Sequence[float | int | None]) -> MeanStd:
    """Mean and sample std (ddof=1) as ``trainers.walk_forward`` records them."""
    if any(v is None or not np.isfinite(v) for v in values):
        return MeanStd(mean=None, std=None)
    arr = np.asarray(values, dtype=np.float64)
    return MeanStd(mean=float(arr.mean()), std=float(arr.std(ddof=1)))
