"""Hand-built ONNX graphs of the rule baselines (majority class, persistence), saved one way.

Both take ``input`` [N, n_features] float rows and give ``probabilities`` [N, 2],
the contract ``trainers.onnx_io.OnnxScorer`` and live scoring read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

import onnx
from onnx import TensorProto, helper

ONNX_OPSET: Final = 15
ONNX_IR_VERSION: Final = 8  # the IR version that goes with opset 15: readable by older runtimes too


def save_rule_graph(
    nodes: Sequence[onnx.NodeProto],
    initializers: Sequence[onnx.TensorProto],
    name: str,
    n_features: int,
    path: Path,
) -> None:
    """Wrap ``nodes`` (reading ``input``, writing ``probabilities``) in a checked model file."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="ctd",
        ir_version=ONNX_IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
