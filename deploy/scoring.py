"""The models live scoring serves: ONNX sessions of the versions in slots, and their features.

``ModelCache`` loads a version once (checking that it was trained on the live
feature spec and takes the input shape its metadata promises), keeps its
rolling live accuracy beside it, remembers a version that cannot be served (and
reports it once) until it leaves the slots, and forgets everything of a
version in one call.
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from deploy.registry import Registry
from trainers.data import Bars, FloatArray
from trainers.errors import InvalidInputError
from trainers.features import FEATURE_SPEC, compute_features
from trainers.onnx_io import OnnxScorer
from trainers.targets import DIRECTION, Target

ACCURACY_WINDOW: Final = 500
"""Resolved predictions in a version's rolling live accuracy."""


class LiveModelError(ValueError):
    """A registry version that live scoring cannot serve (feature spec, window, shape)."""

    def __init__(self, symbol: str, version: str, problem: str) -> None:
        self.symbol, self.version, self.problem = symbol, version, problem
        super().__init__(f"{symbol} {version}: {problem}")


@dataclass(frozen=True, slots=True)
class LiveModel:
    """A loaded session, when the version's training data ends, who trained it and when,
    what it predicts, and (return models) its test RMSE, which scales the trial's loss cap."""

    scorer: OnnxScorer
    trained_until: int | None
    trainer: str | None = None
    created_ts: float | None = None
    test_rmse: float | None = None

    @property
    def window(self) -> int:
        return self.scorer.window

    @property
    def target(self) -> Target:
        return self.scorer.target

    def score(self, rows: FloatArray, k: int) -> FloatArray:
        """Predictions for the last ``k`` bars (P(up) clipped into [0, 1], or returns), given
        their ``k + window - 1`` newest feature rows; NaN where a needed row or the output
        is not finite (too little history, a broken model): no prediction is logged."""
        w = self.window
        rows = rows[len(rows) - (k + w - 1) :]
        out = np.full(k, np.nan)
        if k == 1:  # the live path's common case: the session's pre-bound one-row call
            if np.isfinite(rows).all():
                with contextlib.suppress(InvalidInputError):  # beyond float32: no prediction
                    out[0] = self.scorer.predict_latest(rows)
        else:
            # Sequence models take, per bar, the window of feature rows ending at it.
            inputs = rows if w == 1 else sliding_window_view(rows, w, axis=0).transpose(0, 2, 1)
            finite = np.isfinite(inputs.reshape(k, -1)).all(axis=1)
            if finite.any():
                out[finite] = self.scorer.predict(inputs[finite])
        out[~np.isfinite(out)] = np.nan
        if self.target == DIRECTION:
            np.clip(out, 0.0, 1.0, out=out)
        return out


@dataclass
class Rolling:
    """Correct / wrong of a version's newest resolved predictions."""

    window: deque[bool] = field(default_factory=lambda: deque(maxlen=ACCURACY_WINDOW))
    correct: int = 0

    def add(self, ok: bool) -> None:
        """One resolved prediction: whether it called the direction (``targets.hit``)."""
        if len(self.window) == self.window.maxlen:
            self.correct -= self.window[0]
        self.window.append(ok)
        self.correct += ok

    @property
    def accuracy(self) -> float | None:
        return self.correct / len(self.window) if self.window else None


@dataclass
class _Served:
    model: LiveModel | None
    error: Exception | None
    rolling: Rolling = field(default_factory=Rolling)


class ModelCache:
    """Versions being served, by (symbol, version). Not thread-safe: the scorer locks.

    Only models of the live ``target`` and ``horizon`` are served: a trial pairs the
    champion and shadow on the same outcomes, and consumers read one kind of prediction.
    """

    def __init__(
        self, registry: Registry, max_window: int, target: Target = DIRECTION, horizon: int = 1
    ) -> None:
        self._registry = registry
        self._max_window = max_window
        self.target, self.horizon = target, horizon
        self._served: dict[tuple[str, str], _Served] = {}
        self._new_errors: dict[str, list[str]] = {}

    def model(self, symbol: str, version: str) -> LiveModel | None:
        """The version's model, loaded on first use; None if it cannot be served."""
        return self._entry(symbol, version).model

    def rolling(self, symbol: str, version: str) -> Rolling:
        return self._entry(symbol, version).rolling

    def accuracy(self, symbol: str, version: str | None) -> float | None:
        served = None if version is None else self._served.get((symbol, version))
        return None if served is None else served.rolling.accuracy

    def loaded(self, symbol: str, version: str) -> bool:
        return (symbol, version) in self._served

    def forget(self, symbol: str, version: str) -> None:
        """Drop everything kept about a version that left the slots."""
        self._served.pop((symbol, version), None)

    def failure(self, symbol: str, version: str) -> Exception | None:
        """Why a version cannot be served (None when it loaded or was never tried)."""
        served = self._served.get((symbol, version))
        return None if served is None else served.error

    def forget_symbol(self, symbol: str) -> None:
        for key in [key for key in self._served if key[0] == symbol]:
            del self._served[key]

    def take_errors(self, symbol: str) -> list[str]:
        """Load failures not reported yet (each is reported once)."""
        return self._new_errors.pop(symbol, [])

    def _entry(self, symbol: str, version: str) -> _Served:
        key = (symbol, version)
        served = self._served.get(key)
        if served is None:
            try:
                served = _Served(self._load(symbol, version), None)
            except Exception as exc:  # a broken model must not stop the other slot or symbol
                error = f"{symbol} {version}: cannot load for live scoring: {exc}"
                served = _Served(None, exc)
                self._new_errors.setdefault(symbol, []).append(error)
            self._served[key] = served
        return served

    def _load(self, symbol: str, version: str) -> LiveModel:
        meta = self._registry.metadata(symbol, version)
        spec = meta.feature_spec
        if spec.version != FEATURE_SPEC.version or list(spec.names) != list(FEATURE_SPEC.names):
            raise LiveModelError(
                symbol,
                version,
                f"trained on feature spec {spec.version!r}, live features are version "
                f"{FEATURE_SPEC.version} with {len(FEATURE_SPEC.names)} named columns",
            )
        trained_for = (meta.target, spec.label_horizon)
        if trained_for != (self.target, self.horizon):
            raise LiveModelError(
                symbol,
                version,
                f"predicts {meta.target} over {spec.label_horizon} bars, live serves "
                f"{self.target} over {self.horizon} (CTD_TARGET, CTD_HORIZON_BARS)",
            )
        scorer = OnnxScorer(self._registry.model_path(symbol, version))
        n_features = len(FEATURE_SPEC.names)
        onnx = meta.onnx
        expected = (onnx.window, onnx.n_features) if onnx is not None else (1, n_features)
        actual = (scorer.window, scorer.n_features)
        if expected != actual or actual[1] != n_features:
            raise LiveModelError(
                symbol,
                version,
                f"model input is (window, n_features) {actual}, metadata says {expected}, live "
                f"features have {n_features} columns",
            )
        if scorer.window > self._max_window:
            raise LiveModelError(
                symbol,
                version,
                f"window {scorer.window} exceeds live max_window {self._max_window}",
            )
        if scorer.target != meta.target:
            raise LiveModelError(
                symbol, version, f"model outputs a {scorer.target}, metadata says {meta.target}"
            )
        rmse = None if meta.metrics is None else meta.metrics.test.get("rmse")
        return LiveModel(scorer, meta.trained_until, meta.trainer, meta.created_ts, rmse)


def feature_tail(bars: Bars, m: int) -> FloatArray:
    """Feature rows of the last ``m`` bars, computed on only the bars they depend on.

    Row i equals ``compute_features(all bars)`` for the same bar (the feature
    function is offset-invariant); rows without enough history are NaN.
    """
    feats = compute_features(bars.tail(FEATURE_SPEC.lookback + m - 1))
    if len(feats) >= m:
        out: FloatArray = feats[len(feats) - m :]
        return out
    pad = np.full((m - len(feats), len(FEATURE_SPEC.names)), np.nan)
    return np.vstack([pad, feats])
