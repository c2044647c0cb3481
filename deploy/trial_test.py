"""Which promotion test a shadow trial runs: the models' target picks it.

Direction models are judged on paired correctness (``deploy.sequential``), return
models on paired truncated squared errors (``deploy.sequential_loss``): a return
model's correctness (its sign) ignores how far off it was, which is what it is
trained and gated on. Both tests keep the surface ``TrialTest``, so the live path,
the prediction log and the ledger hold either; a saved state names its kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from deploy.sequential import Decision, Evidence, PairedSequentialTest, PromotionTestConfig
from deploy.sequential_loss import PairedLossTest
from trainers.targets import RETURN, Target


class TrialTest(Protocol):
    """A sequential paired test of shadow against champion (``PairedSequentialTest``'s
    contract: decided once, ``to_dict`` continues it exactly)."""

    @property
    def config(self) -> PromotionTestConfig: ...

    @property
    def decision(self) -> Decision: ...

    @property
    def n(self) -> int: ...

    @property
    def evidence(self) -> Evidence: ...

    def observe(
        self,
        champion_value: float,
        shadow_value: float,
        outcome: float,
        *,
        promote_alpha: float | None = None,
    ) -> Decision:
        """Feed one resolved bar: both slots' predictions and what they resolved to."""
        ...

    def restarted(self) -> TrialTest:
        """A fresh test with the same config (and loss cap)."""
        ...

    def to_dict(self) -> dict[str, Any]: ...


_FROM_DICT: Final[Mapping[str, Callable[[Mapping[str, Any]], TrialTest]]] = {
    "accuracy": PairedSequentialTest.from_dict,
    "squared_error": PairedLossTest.from_dict,
}
"""A saved test's ``kind`` -> how to continue it (no kind: saved before return targets)."""


def new_test(target: Target, config: PromotionTestConfig, cap: float | None = None) -> TrialTest:
    """A fresh test for a trial of ``target`` models; return trials need the loss ``cap``
    (``deploy.sequential_loss.loss_cap``), fixed for the trial's life."""
    if target == RETURN:
        if cap is None:
            raise ValueError("a return-target trial needs its loss cap")
        return PairedLossTest(config, cap)
    return PairedSequentialTest(config)


def test_from_dict(doc: Mapping[str, Any]) -> TrialTest:
    """Continue a saved test; ValueError naming the field for a malformed state."""
    kind = doc.get("kind", "accuracy")
    load = _FROM_DICT.get(kind) if isinstance(kind, str) else None
    if load is None:
        raise ValueError(
            f"promotion test state kind must be one of {sorted(_FROM_DICT)}, got {kind!r}"
        )
    return load(doc)
