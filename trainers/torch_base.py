"""The training loop every PyTorch trainer shares; an architecture only builds its network.

A ``TorchTrainer`` subclass names itself, lists its architecture presets and
builds an ``nn.Module`` mapping standardised ``(N, window, n_features)``
windows to ``(N,)`` outputs of a one-unit linear head: logits for a ``direction``
target, standardised returns for a ``return`` target. Everything else lives here,
once: windows from the ``Dataset``, per-feature standardisation baked into the
model (so the ONNX file needs raw feature rows, exactly what live scoring has),
AdamW (weight decay), gradient clipping, a plateau learning-rate schedule, early
stopping on validation loss with the best weights restored, the monitor protocol,
and ONNX export with a dynamic batch axis.

A return target trains the same head on MSE against the labels divided by their
training standard deviation, so the loss, learning rates and weight decay tuned on
unit-scale losses still fit returns of ~1e-3, and predicting zero scores an MSE near
1 (the scale the monitor sees). The labels are scaled but not centred: a bar's mean
return is a few hundredths of its std, so centring buys no conditioning, while
leaving it out keeps output 0 meaning "no move" and the de-standardisation one
multiplication; the head's bias learns whatever drift there is. That
multiplication sits inside the exported module, whose output ``prediction`` is the
return itself.

Window 1 models take ``(N, n_features)`` rows like every tabular model;
the wrapper adds the time axis.

Importing this module imports torch: only the trainer factories in
``trainers.base`` import it, on first use.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Final, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from monitors.base import Action, TrainingMonitor
from trainers.augment import augment_training
from trainers.base import abort_reason, require, resolve_params
from trainers.dataset import Dataset, Float32Array, as_model_input, validate_dataset
from trainers.errors import InvalidInputError, TrainingAborted
from trainers.onnx_io import PREDICTION_OUTPUT
from trainers.repro import seed_everything
from trainers.targets import DIRECTION, RETURN, Target

ONNX_OPSET: Final = 17
DEVICES: Final = ("auto", "cpu", "cuda")
_EVAL_BATCH: Final = 4096
_MIN_STD: Final = 1e-8  # a constant feature is left unscaled rather than divided by ~0
_Loss = Literal["bce", "mse"]

TRAINING_PRESETS: Final[Mapping[str, Mapping[str, Any]]] = {
    "tiny": {
        "window": 16,
        "epochs": 15,
        "batch_size": 64,
        "lr": 3e-3,
        "weight_decay": 1e-4,
        "dropout": 0.1,
        "grad_clip": 1.0,
        "patience": 4,
    },
    "lightweight": {
        "window": 32,
        "epochs": 50,
        "batch_size": 128,
        "lr": 2e-3,
        "weight_decay": 1e-3,
        "dropout": 0.2,
        "grad_clip": 1.0,
        "patience": 8,
    },
    "deep": {
        "window": 64,
        "epochs": 100,
        "batch_size": 128,
        "lr": 1e-3,
        "weight_decay": 1e-3,
        "dropout": 0.3,
        "grad_clip": 1.0,
        "patience": 12,
    },
}
"""Training hyperparameters by preset; an architecture's presets add (or override) its own."""


class ProbabilityModel(nn.Module):
    """Raw features -> standardise -> network -> P(up) ``[N, 1]``: the module that is exported."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor, window: int) -> None:
        super().__init__()
        self.net = net
        self.window = window
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.window == 1:  # tabular input (N, F): a one-step window
            x = x.unsqueeze(1)
        logits: torch.Tensor = self.net((x - self.mean) / self.std)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x)).unsqueeze(1)


class ReturnModel(ProbabilityModel):
    """Raw features -> standardise -> network -> x ``label_scale``: the return ``[N, 1]``.

    ``logits`` is the head's raw output, here the standardised return the loss sees.
    """

    label_scale: torch.Tensor

    def __init__(
        self,
        net: nn.Module,
        mean: torch.Tensor,
        std: torch.Tensor,
        window: int,
        label_scale: torch.Tensor,
    ) -> None:
        super().__init__(net, mean, std, window)
        self.register_buffer("label_scale", label_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.logits(x) * self.label_scale).unsqueeze(1)


class TorchModel:
    """A trained network on the CPU, in eval mode; P(up) or the return, natively and
    through ONNX."""

    def __init__(
        self,
        trainer: str,
        module: ProbabilityModel,
        params: Mapping[str, Any],
        n_features: int,
    ) -> None:
        self.trainer = trainer
        self.module = module
        self.params = params
        self.n_features = n_features
        self.window = module.window
        self.target: Target = RETURN if isinstance(module, ReturnModel) else DIRECTION
        self.n_params = sum(p.numel() for p in module.parameters())

    def predict(self, x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """P(up) for direction; the forward log return for return."""
        arr = np.require(as_model_input(x, self.n_features, self.window), requirements=["C", "W"])
        with torch.inference_mode():
            out = self.module(torch.from_numpy(arr))[:, 0]
        result: npt.NDArray[np.float64] = out.numpy().astype(np.float64)
        return result

    def predict_proba(self, x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        if self.target != DIRECTION:
            raise InvalidInputError(f"{self.trainer}: predicts returns, not P(up)")
        return self.predict(x)

    def export_onnx(self, path: Path) -> None:
        """Input ``input`` float32 ``[N, n_features]`` or ``[N, window, n_features]``;
        output ``p_up`` ``[N, 1]`` (direction) or ``prediction`` ``[N, 1]`` (return)."""
        output = "p_up" if self.target == DIRECTION else PREDICTION_OUTPUT
        shape = (2, self.n_features) if self.window == 1 else (2, self.window, self.n_features)
        example = torch.zeros(shape, dtype=torch.float32)
        with warnings.catch_warnings():
            # The TorchScript exporter's deprecation and tracer notes; the parity check
            # on real rows is what judges the exported graph.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                self.module,
                (example,),
                str(path),
                dynamo=False,
                input_names=["input"],
                output_names=[output],
                dynamic_axes={"input": {0: "N"}, output: {0: "N"}},
                opset_version=ONNX_OPSET,
            )


class TorchTrainer(ABC):
    """Base of the PyTorch trainers: presets, validation and the shared ``fit``.

    Keywords: ``preset`` (tiny, lightweight, deep); ``device`` (auto = CUDA when
    available, else CPU); ``threads`` (torch intra-op threads; 1 by default
    because the daemon runs several training processes on few cores);
    ``augment``; and any training or architecture hyperparameter to override
    the preset's value (``window``, ``epochs``, ``batch_size``, ``lr``,
    ``weight_decay``, ``dropout``, ``grad_clip``, ``patience`` and the keys of
    ``arch_presets``). Unknown or out-of-range values raise ``InvalidInputError``.
    """

    name: str
    arch_presets: Mapping[str, Mapping[str, Any]]
    network: Callable[..., nn.Module]
    """The net, built as ``network(n_features, dropout=..., **arch)`` with this preset's
    architecture keys: standardised ``(N, window, n_features)`` -> ``(N,)`` logits."""
    unit_test_params: ClassVar[Mapping[str, Any]] = {"preset": "tiny"}

    def __init__(
        self,
        *,
        preset: str = "lightweight",
        device: str = "auto",
        threads: int = 1,
        augment: bool = False,
        **params: Any,
    ) -> None:
        presets = {k: {**v, **self.arch_presets[k]} for k, v in TRAINING_PRESETS.items()}
        p = resolve_params(self.name, presets, preset, params)
        require("device", device, device in DEVICES, f"one of {', '.join(DEVICES)}")
        require("threads", threads, isinstance(threads, int) and threads >= 1, "an integer >= 1")
        for key in ("window", "epochs", "batch_size", "patience", *self.arch_presets[preset]):
            require(key, p[key], isinstance(p[key], int) and p[key] >= 1, "an integer >= 1")
        require("lr", p["lr"], 0 < p["lr"] < math.inf, "> 0")
        require("weight_decay", p["weight_decay"], 0 <= p["weight_decay"] < math.inf, ">= 0")
        require("dropout", p["dropout"], 0 <= p["dropout"] < 1, "in [0, 1)")
        require("grad_clip", p["grad_clip"], 0 < p["grad_clip"] < math.inf, "> 0")
        self.device, self.threads, self.augment = device, threads, augment
        self.hyper: Mapping[str, Any] = p
        self.params: Mapping[str, Any] = {
            "preset": preset,
            **p,
            "device": device,
            "threads": threads,
            "augment": augment,
        }

    def build(self, n_features: int, params: Mapping[str, Any]) -> nn.Module:
        arch = {key: params[key] for key in self.arch_presets["tiny"]}
        return self.network(n_features, dropout=params["dropout"], **arch)

    def fit(self, data: Dataset, monitor: TrainingMonitor, seed: int) -> TorchModel:
        """Train with early stopping on validation loss; returns the best epoch's weights.

        Each epoch reports to ``monitor`` the epoch's train and validation loss
        (eval mode, on the real training rows, never augmented copies): log loss for
        direction, the MSE of the standardised labels for return. ``extra`` has
        ``grad_norm`` (largest total gradient norm of the epoch's batches, before
        clipping) and ``lr``, and for direction ``train_accuracy`` and ``val_accuracy``
        (no rule reads a return model's hit rate, so none is reported).
        """
        validate_dataset(data)
        device = _resolve_device(self.device)
        torch.set_num_threads(self.threads)
        seed_everything(seed)
        p = self.hyper
        window = int(p["window"])

        x_train = data.inputs("train", window)
        x_fit, y_fit = x_train, data.y_train
        if self.augment:
            x_fit, y_fit = augment_training(x_fit, y_fit, np.random.default_rng(seed))
        mean, std = _feature_stats(data.X_train)
        returns = data.target == RETURN
        net = self.build(data.n_features, p)
        # Return labels are divided by their training std (see the module docstring).
        scale = float(np.float32(np.std(data.y_train))) if returns else 1.0
        model = (
            ReturnModel(net, mean, std, window, torch.tensor(scale, dtype=torch.float32))
            if returns
            else ProbabilityModel(net, mean, std, window)
        ).to(device)
        loss_kind: _Loss = "mse" if returns else "bce"

        def tensors(x: Float32Array, y: npt.NDArray[Any]) -> tuple[torch.Tensor, torch.Tensor]:
            labels = np.asarray(y, dtype=np.float64) / scale if returns else y
            return (
                torch.tensor(x, dtype=torch.float32, device=device),
                torch.tensor(labels, dtype=torch.float32, device=device),
            )

        fit_xy = tensors(x_fit, y_fit)
        train_xy = tensors(x_train, data.y_train)
        val_xy = tensors(data.inputs("val", window), data.y_val)

        optimizer = torch.optim.AdamW(
            model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"]
        )
        schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.5, patience=max(1, p["patience"] // 2)
        )
        generator = torch.Generator().manual_seed(seed)
        best_loss, best_epoch = math.inf, -1
        best_state = _snapshot(model)
        epoch = -1
        for epoch in range(p["epochs"]):
            grad_norm = _train_epoch(model, optimizer, fit_xy, p, generator, loss_kind=loss_kind)
            train_loss, train_acc = _evaluate(model, *train_xy, loss_kind)
            val_loss, val_acc = _evaluate(model, *val_xy, loss_kind)
            extra = {"grad_norm": grad_norm, "lr": float(optimizer.param_groups[0]["lr"])}
            if not returns:
                extra = {"train_accuracy": train_acc, "val_accuracy": val_acc, **extra}
            action = monitor.on_step(epoch, train_loss, val_loss, extra)
            if action is Action.ABORT:
                raise TrainingAborted(self.name, epoch, abort_reason(monitor))
            if val_loss < best_loss:
                best_loss, best_epoch, best_state = val_loss, epoch, _snapshot(model)
            if action is Action.STOP or epoch - best_epoch >= p["patience"]:
                break
            schedule.step(val_loss)

        model.load_state_dict(best_state)
        model = model.cpu().eval()
        fitted = {
            **self.params,
            "device_used": device,
            "seed": seed,
            "epochs_run": epoch + 1,
            "best_epoch": best_epoch,
            "train_samples": len(y_fit),
        }
        if returns:
            fitted["label_scale"] = scale
        return TorchModel(self.name, model, fitted, data.n_features)


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("device 'cuda' was requested but CUDA is not available here")
    return device


def _feature_stats(rows: Float32Array) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and std of the training rows (never val/test: that would leak)."""
    mean = rows.mean(axis=0, dtype=np.float64)
    std = rows.std(axis=0, dtype=np.float64)
    std = np.where(std > _MIN_STD, std, 1.0)
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train_epoch(
    model: ProbabilityModel,
    optimizer: torch.optim.Optimizer,
    xy: tuple[torch.Tensor, torch.Tensor],
    p: Mapping[str, Any],
    generator: torch.Generator,
    *,
    loss_kind: _Loss = "bce",
) -> float:
    """One pass over shuffled mini-batches; returns the largest pre-clipping gradient norm."""
    x, y = xy
    model.train()
    order = torch.randperm(len(y), generator=generator).to(y.device)
    loss_fn: nn.Module = nn.MSELoss() if loss_kind == "mse" else nn.BCEWithLogitsLoss()
    grad_norm = 0.0
    for start in range(0, len(y), p["batch_size"]):
        batch = order[start : start + p["batch_size"]]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model.logits(x[batch]), y[batch])
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), p["grad_clip"])
        grad_norm = max(grad_norm, float(norm))
        optimizer.step()
    return grad_norm


def _evaluate(
    model: ProbabilityModel, x: torch.Tensor, y: torch.Tensor, loss_kind: _Loss = "bce"
) -> tuple[float, float]:
    """Mean loss in eval mode and accuracy (P(up) >= 0.5, i.e. logit >= 0; meaningless for
    ``mse``, whose caller drops it)."""
    model.eval()
    loss_sum, hits = 0.0, 0.0
    with torch.inference_mode():
        for start in range(0, len(y), _EVAL_BATCH):
            logits = model.logits(x[start : start + _EVAL_BATCH])
            target = y[start : start + _EVAL_BATCH]
            if loss_kind == "mse":
                loss = nn.functional.mse_loss(logits, target, reduction="sum")
            else:
                loss = nn.functional.binary_cross_entropy_with_logits(
                    logits, target, reduction="sum"
                )
            loss_sum += float(loss)
            hits += float(((logits >= 0).float() == target).sum())
    return loss_sum / len(y), hits / len(y)
