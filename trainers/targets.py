"""What a model predicts: the direction of the next ``horizon`` bars, or their return.

``direction`` (the default): label 1.0 when ``close[t+h] > close[t]``, else 0.0; a
model outputs P(up). ``return``: label ``log(close[t+h] / close[t])``; a model
outputs that return (its ONNX output is named ``prediction``, ``trainers.onnx_io``).
The horizon ``h`` is ``TrainConfig.horizon_bars`` (``FeatureSpec.label_horizon`` in
metadata): labels of neighbouring rows overlap by ``h - 1`` bars, which is why the
splits' embargo is ``lookback + h`` and paired tests use a HAC variance of lag ``h - 1``.
"""

from __future__ import annotations

import math
from typing import Final, Literal

Target = Literal["direction", "return"]
DIRECTION: Final = "direction"
RETURN: Final = "return"
TARGETS: Final[tuple[Target, ...]] = (DIRECTION, RETURN)


def realised(target: Target, start_close: float, end_close: float) -> float:
    """The outcome a prediction made at ``start_close`` resolves to, ``h`` bars later at
    ``end_close``: the label (1.0 up, 0.0 not) or the log return, as training labels it."""
    if target == RETURN:
        return math.log(end_close / start_close)
    return 1.0 if end_close > start_close else 0.0


def hit(target: Target, value: float, outcome: float) -> bool | None:
    """Whether a prediction called the direction of its outcome.

    Direction: P(up) >= 0.5 matches the label. Return: the predicted sign matches the
    realised one; None for a zero realised return (no direction to call), as the
    offline ``hit_rate`` leaves such rows out, so live and test hit rates compare.
    """
    if target == RETURN:
        if outcome == 0.0:
            return None
        return (value > 0.0) == (outcome > 0.0)
    return (value >= 0.5) == (outcome == 1.0)
