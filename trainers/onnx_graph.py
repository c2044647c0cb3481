"""ONNX graph helpers the backends share: hand-built rule graphs saved one way, and the
``prediction`` output every return-target export ends in.

Rule graphs (majority class, persistence, the naive mean return) take ``input``
[N, n_features] float rows and give ``probabilities`` [N, 2] (direction) or
``prediction`` [N, 1] (return), the contract ``trainers.onnx_io.OnnxScorer`` and
live scoring read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trainers.onnx_io import PREDICTION_OUTPUT, PROBABILITIES_OUTPUT

ONNX_OPSET: Final = 15
ONNX_IR_VERSION: Final = 8  # the IR version that goes with opset 15: readable by older runtimes too


def save_rule_graph(
    nodes: Sequence[onnx.NodeProto],
    initializers: Sequence[onnx.TensorProto],
    name: str,
    n_features: int,
    path: Path,
    *,
    output: str = PROBABILITIES_OUTPUT,
) -> None:
    """Wrap ``nodes`` (reading ``input``, writing ``output``) in a checked model file.

    ``output`` is ``probabilities`` ([N, 2], P(down), P(up)) or ``prediction`` ([N, 1]).
    """
    width = 1 if output == PREDICTION_OUTPUT else 2
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", width])],
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


def with_prediction_output(
    model: onnx.ModelProto, source: str, scale: float = 1.0
) -> onnx.ModelProto:
    """``model`` with ``source`` ([N, 1] float) times ``scale`` as its one output, ``prediction``.

    Converters name a regressor's output as they like (``variable``) and a model
    trained on standardised labels must give returns: this appends one ``Mul``
    (an ``Identity`` when ``scale`` is 1) and drops every other output, so the
    scorer reads the model as a return model (``trainers.onnx_io``).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    if source not in {o.name for o in graph.output}:
        names = ", ".join(o.name for o in graph.output)
        raise ValueError(f"the model has no output {source!r}; outputs: {names}")
    if scale == 1.0:
        graph.node.append(helper.make_node("Identity", [source], [PREDICTION_OUTPUT]))
    else:
        factor = numpy_helper.from_array(np.array(scale, dtype=np.float32), "prediction_scale")
        graph.initializer.append(factor)
        graph.node.append(
            helper.make_node("Mul", [source, "prediction_scale"], [PREDICTION_OUTPUT])
        )
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(PREDICTION_OUTPUT, TensorProto.FLOAT, ["N", 1])
    )
    if not any(op.domain in ("", "ai.onnx") for op in out.opset_import):
        out.opset_import.append(helper.make_opsetid("", ONNX_OPSET))
    onnx.checker.check_model(out)
    return out
