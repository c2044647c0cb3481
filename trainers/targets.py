"""What a model predicts: the direction of the next ``horizon`` bars, or their return.

``direction`` (the default): label 1.0 when ``close[t+h] > close[t]``, else 0.0; a
model outputs P(up). ``return``: label ``log(close[t+h] / close[t])``; a model
outputs that return (its ONNX output is named ``prediction``, ``trainers.onnx_io``).
The horizon ``h`` is ``TrainConfig.horizon_bars`` (``FeatureSpec.label_horizon`` in
metadata): labels of neighbouring rows overlap by ``h - 1`` bars, which is why the
splits' embargo is ``lookback + h`` and paired tests use a HAC variance of lag ``h - 1``.
"""

from __future__ import annotations

from typing import Final, Literal

Target = Literal["direction", "return"]
DIRECTION: Final = "direction"
RETURN: Final = "return"
TARGETS: Final[tuple[Target, ...]] = (DIRECTION, RETURN)
