"""Several models of one target in ONE ONNX graph: a shared input, each member's graph, a
combiner.

Members may come from any exporter (torch, skl2onnx, onnxmltools, the hand-built
rule graphs), so their opsets, IR versions and tensor names differ. Each member
is prefixed (``m0_``, ``m1_``, ...) so names never collide, brought to one
default-domain opset (``onnx.version_converter``; other domains such as
``ai.onnx.ml`` keep their highest version) and fed from the one input:

- input ``input`` float32 ``[N, W, F]`` with ``W`` the largest member window,
  or ``[N, F]`` rows when every member is tabular (``OnnxScorer`` reads the
  window from this shape);
- a tabular member reads the last row of each window, a sequence member of
  window ``w < W`` its last ``w`` rows (exactly ``Dataset.inputs(part, w)``);
- each member's prediction is taken as ``OnnxScorer`` reads it (output
  ``probabilities`` if present, else the first; the last column of
  ``[N, 2]`` / ``[N, 1]``, or ``[N]`` itself): P(up), or a predicted return when
  the member's output is ``prediction`` (``trainers.onnx_io``);
- output, the contract of every other model of the target: ``probabilities``
  float32 ``[N, 2]`` = (1 - p, p) for P(up) members, ``prediction`` float32
  ``[N, 1]`` for return members. Members of different targets are refused.

The combiner is a weighted mean of the members' outputs, a logistic model on
their clipped logits (P(up) only) or a linear one with an intercept (returns
only) (``Combiner``); ``Combiner.combine`` computes the same function in numpy,
which is what the graph's parity is measured against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper, version_converter

from trainers.errors import InvalidInputError
from trainers.onnx_io import PREDICTION_OUTPUT
from trainers.targets import DIRECTION, RETURN, Target

FloatArray = npt.NDArray[np.float64]

INPUT: Final = "input"
OUTPUT: Final = "probabilities"
"""The output of a P(up) ensemble; a return ensemble's is ``PREDICTION_OUTPUT``."""
LOGIT_CLIP: Final = 1e-6
"""Probabilities are clipped to [LOGIT_CLIP, 1 - LOGIT_CLIP] before a logit: a tree model's
sure 0 or 1 must not become an infinite logit."""
MIN_OPSET: Final = 15
"""The lowest default-domain opset the combiner's own nodes are written for."""


@dataclass(frozen=True, slots=True)
class Combiner:
    """How members' outputs become one: ``mean`` (sum of ``weights`` x p, weights sum to
    1; P(up) or returns), ``logistic`` (sigmoid(``intercept`` + sum of ``weights`` x
    logit(clipped p)); P(up)) or ``linear`` (``intercept`` + sum of ``weights`` x r;
    returns)."""

    kind: Literal["mean", "logistic", "linear"]
    weights: tuple[float, ...]
    intercept: float = 0.0

    def combine(self, predictions: FloatArray) -> FloatArray:
        """(n,) combined prediction from ``(n, members)`` member predictions, in float64."""
        p = np.asarray(predictions, dtype=np.float64)
        w = np.asarray(self.weights, dtype=np.float64)
        if self.kind == "mean":
            out: FloatArray = p @ w
            return out
        if self.kind == "linear":
            linear: FloatArray = p @ w + self.intercept
            return linear
        z = logits(p) @ w + self.intercept
        result: FloatArray = 1.0 / (1.0 + np.exp(-z))
        return result


def logits(probabilities: FloatArray) -> FloatArray:
    """log(p / (1 - p)) of clipped probabilities, as the graph computes them.

    The clip bounds are the float32 values the graph uses, so numpy and ONNX
    clip at the same points.
    """
    lo, hi = float(np.float32(LOGIT_CLIP)), float(np.float32(1.0 - LOGIT_CLIP))
    p = np.clip(np.asarray(probabilities, dtype=np.float64), lo, hi)
    out: FloatArray = np.log(p) - np.log1p(-p)
    return out


@dataclass(frozen=True, slots=True)
class Member:
    """One member graph as loaded, with the input shape it expects and what it predicts
    (``return`` when its output is named ``prediction``, as ``OnnxScorer`` reads it)."""

    model: onnx.ModelProto
    window: int
    n_features: int
    target: Target = DIRECTION

    @classmethod
    def load(cls, path: Path) -> Member:
        """The model at ``path``; ``InvalidInputError`` unless it has one fixed-size input."""
        model = onnx.load(str(path))
        inputs = _data_inputs(model.graph)
        if len(inputs) != 1:
            raise InvalidInputError(f"{path}: expected one model input, found {len(inputs)}")
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in _dims(inputs[0])]
        if len(dims) not in (2, 3) or not all(d >= 1 for d in dims[1:]):
            raise InvalidInputError(
                f"{path}: input must be [N, n_features] or [N, window, n_features] "
                f"with fixed sizes, got {dims}"
            )
        names = [o.name for o in model.graph.output]
        returns = OUTPUT not in names and names[:1] == [PREDICTION_OUTPUT]
        return cls(
            model, dims[1] if len(dims) == 3 else 1, dims[-1], RETURN if returns else DIRECTION
        )


def compose(members: Sequence[Member], combiner: Combiner, path: Path) -> None:
    """Write the ensemble graph of ``members`` under ``combiner`` to ``path`` (checked).

    Raises ``InvalidInputError`` when members disagree on the number of
    features or the target, the combiner does not suit the target, a member's opset
    cannot be converted, or weights and members differ in number.
    """
    if not members:
        raise InvalidInputError("an ensemble graph needs at least one member")
    targets = {m.target for m in members}
    if len(targets) != 1:
        raise InvalidInputError(f"members predict different targets: {sorted(targets)}")
    (target,) = targets
    suits = {DIRECTION: ("mean", "logistic"), RETURN: ("mean", "linear")}[target]
    if combiner.kind not in suits:
        raise InvalidInputError(
            f"a {combiner.kind} combiner does not suit {target} members; valid: {', '.join(suits)}"
        )
    if len(combiner.weights) != len(members):
        raise InvalidInputError(
            f"{len(combiner.weights)} weights for {len(members)} members: one each is required"
        )
    n_features = {m.n_features for m in members}
    if len(n_features) != 1:
        raise InvalidInputError(f"members disagree on the number of features: {sorted(n_features)}")
    (features,) = n_features
    window = max(m.window for m in members)
    opset = max([MIN_OPSET, *(_default_opset(m.model) for m in members)])
    nodes: list[onnx.NodeProto] = []
    inits = [
        _ints("ens_last_row", [-1]),
        numpy_helper.from_array(np.array(-1, np.int64), "ens_last_row_scalar"),
    ]
    value_info: list[onnx.ValueInfoProto] = []
    functions: list[onnx.FunctionProto] = []
    domains: dict[str, int] = {"": opset}
    member_p: list[str] = []
    for i, member in enumerate(members):
        prefix = f"m{i}_"
        model = onnx.compose.add_prefix(_at_opset(member.model, opset, i), prefix)
        graph = model.graph
        for o in model.opset_import:
            if o.domain not in ("", "ai.onnx"):
                domains[o.domain] = max(domains.get(o.domain, 0), o.version)
        (member_input,) = _data_inputs(graph)
        own = f"ens_{i}_"  # the names this module adds; a member's all start with ``prefix``
        nodes.extend(_feed(member_input.name, member.window, window, own, inits))
        nodes.extend(graph.node)
        inits.extend(graph.initializer)
        value_info.extend(graph.value_info)
        functions.extend(model.functions)
        p = f"{own}p_up"
        nodes.extend(_p_up(_probability_output(graph, prefix), p, own, inits))
        member_p.append(p)
    nodes.extend(_combine(member_p, combiner, inits, target))
    used = {name for node in nodes for name in node.input}
    inits = [t for t in inits if t.name in used or not t.name.startswith("ens_")]
    shape: list[str | int] = ["N", features] if window == 1 else ["N", window, features]
    graph = helper.make_graph(
        nodes,
        "ctd_ensemble",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, shape)],
        [
            helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 2])
            if target == DIRECTION
            else helper.make_tensor_value_info(PREDICTION_OUTPUT, TensorProto.FLOAT, ["N", 1])
        ],
        initializer=inits,
        value_info=value_info,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(domains.items())],
        producer_name="ctd",
        ir_version=max(m.model.ir_version for m in members),
        functions=functions,
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _data_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (old exporters list weights as inputs too)."""
    weights = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in weights]


def _dims(value: onnx.ValueInfoProto) -> Sequence[onnx.TensorShapeProto.Dimension]:
    dims: Sequence[onnx.TensorShapeProto.Dimension] = value.type.tensor_type.shape.dim
    return dims


def _default_opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _at_opset(model: onnx.ModelProto, opset: int, index: int) -> onnx.ModelProto:
    """``model`` with its default-domain nodes converted to ``opset``.

    A graph with no default-domain node (xgboost's single tree-ensemble node) needs
    no conversion; duplicate opset entries (skl2onnx writes some) are merged.
    """
    own = _default_opset(model)
    uses_default = any(n.domain in ("", "ai.onnx") for n in model.graph.node)
    if own == opset or not uses_default:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    else:
        try:
            out = version_converter.convert_version(model, opset)
        except Exception as exc:  # the converter raises bare RuntimeErrors
            raise InvalidInputError(
                f"member {index}: cannot convert opset {own} to {opset}: {exc}"
            ) from exc
    merged: dict[str, int] = {}
    for o in out.opset_import:
        domain = "" if o.domain == "ai.onnx" else o.domain
        merged[domain] = max(merged.get(domain, 0), o.version)
    merged[""] = opset
    del out.opset_import[:]
    out.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(merged.items()))
    return out


def _probability_output(graph: onnx.GraphProto, prefix: str) -> onnx.ValueInfoProto:
    """The output ``OnnxScorer`` reads: ``probabilities`` (prefixed) if present, else the first."""
    outputs: list[onnx.ValueInfoProto] = list(graph.output)
    return next((o for o in outputs if o.name == prefix + OUTPUT), outputs[0])


def _feed(
    name: str, window: int, ensemble_window: int, prefix: str, inits: list[onnx.TensorProto]
) -> list[onnx.NodeProto]:
    """Nodes writing a member's input ``name`` from the ensemble input."""
    if window == ensemble_window:
        return [helper.make_node("Identity", [INPUT], [name], name=f"{prefix}feed")]
    if window == 1:  # a tabular member in a sequence ensemble: the last row of each window
        return [
            helper.make_node(
                "Gather", [INPUT, "ens_last_row_scalar"], [name], name=f"{prefix}feed", axis=1
            )
        ]
    starts, ends, axes = f"{prefix}starts", f"{prefix}ends", f"{prefix}axes"
    inits.extend(
        [
            _ints(starts, [ensemble_window - window]),
            _ints(ends, [ensemble_window]),
            _ints(axes, [1]),
        ]
    )
    return [helper.make_node("Slice", [INPUT, starts, ends, axes], [name], name=f"{prefix}feed")]


def _p_up(
    output: onnx.ValueInfoProto, p: str, prefix: str, inits: list[onnx.TensorProto]
) -> list[onnx.NodeProto]:
    """Nodes turning a member's output into ``p``: ``[N, 1]`` P(up) as float32."""
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in _dims(output)]
    if (len(dims) == 2 and dims[1] not in (0, 1, 2)) or len(dims) not in (0, 1, 2):
        raise InvalidInputError(
            f"member output {output.name!r} has shape {dims}; expected [N, 2], [N, 1] or [N]"
        )
    shape = f"{prefix}as_columns"
    inits.append(_ints(shape, [0, -1]))
    # [N] -> [N, 1]; [N, k] stays: then the last column is P(up) for [N, 2] and [N, 1] alike.
    return [
        helper.make_node("Reshape", [output.name, shape], [f"{p}_2d"]),
        helper.make_node("Gather", [f"{p}_2d", "ens_last_row"], [f"{p}_any"], axis=1),
        helper.make_node("Cast", [f"{p}_any"], [p], to=TensorProto.FLOAT),
    ]


def _combine(
    member_p: list[str], combiner: Combiner, inits: list[onnx.TensorProto], target: Target
) -> list[onnx.NodeProto]:
    """Nodes from the members' ``[N, 1]`` outputs to the ensemble's ``probabilities``
    (P(up)) or ``prediction`` (returns)."""
    weights = np.asarray(combiner.weights, dtype=np.float32).reshape(-1, 1)
    inits.append(numpy_helper.from_array(weights, "ens_weights"))
    inits.append(numpy_helper.from_array(np.ones((1, 1), np.float32), "ens_one"))
    nodes = [helper.make_node("Concat", member_p, ["ens_members"], axis=1)]
    if target == RETURN:
        inits.append(
            numpy_helper.from_array(np.array([combiner.intercept], np.float32), "ens_intercept")
        )
        return [
            *nodes,
            helper.make_node("MatMul", ["ens_members", "ens_weights"], ["ens_r"]),
            helper.make_node("Add", ["ens_r", "ens_intercept"], [PREDICTION_OUTPUT]),
        ]
    if combiner.kind == "mean":
        nodes.append(helper.make_node("MatMul", ["ens_members", "ens_weights"], ["ens_p"]))
    else:
        for value, name in ((LOGIT_CLIP, "ens_lo"), (1.0 - LOGIT_CLIP, "ens_hi")):
            inits.append(numpy_helper.from_array(np.array(value, np.float32), name))
        inits.append(
            numpy_helper.from_array(np.array([combiner.intercept], np.float32), "ens_intercept")
        )
        nodes += [
            helper.make_node("Clip", ["ens_members", "ens_lo", "ens_hi"], ["ens_clipped"]),
            helper.make_node("Sub", ["ens_one", "ens_clipped"], ["ens_down"]),
            helper.make_node("Log", ["ens_clipped"], ["ens_log_up"]),
            helper.make_node("Log", ["ens_down"], ["ens_log_down"]),
            helper.make_node("Sub", ["ens_log_up", "ens_log_down"], ["ens_logits"]),
            helper.make_node("MatMul", ["ens_logits", "ens_weights"], ["ens_z0"]),
            helper.make_node("Add", ["ens_z0", "ens_intercept"], ["ens_z"]),
            helper.make_node("Sigmoid", ["ens_z"], ["ens_p"]),
        ]
    nodes += [
        helper.make_node("Sub", ["ens_one", "ens_p"], ["ens_p_down"]),
        helper.make_node("Concat", ["ens_p_down", "ens_p"], [OUTPUT], axis=1),
    ]
    return nodes


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)
