"""e-LOND across the fleet (``deploy.fdr``): its sequence, its levels, the policies, settings."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from daemon.errors import SettingsError
from daemon.settings import load_settings
from deploy.errors import FdrMismatch, RegistryError
from deploy.fdr import (
    RHO,
    ELond,
    FdrConfig,
    FdrLevel,
    PerSymbol,
    e_lond_alpha,
    gamma,
    gamma_remainder,
    open_policy,
)
from deploy.registry import MemoryStorage, RegistryStorage
from deploy.registry.fleet_fdr import FDR_FILE, GAMMA_SHAPE, LEGACY_SHAPE, FleetFdr

ALPHA = 0.05


# -- the sequence and the level ---------------------------------------------------------------


@pytest.mark.parametrize("horizon", [1, 2, 10, 50, 500])
def test_gamma_is_flat_over_the_horizon_then_a_tail_and_sums_to_one(horizon: int) -> None:
    """(1 - rho)/H for t <= H, rho ln(H+1)^2 (1/ln(t)^2 - 1/ln(t+1)^2) after, non-increasing;
    partial sums never pass 1, and with the tail's remainder after T, rho (ln(H+1) /
    ln(T+1))^2 in closed form, the whole sums to 1."""
    t = np.arange(1, 1_000_001)
    g = gamma(t, horizon)
    assert np.all(g[:horizon] == (1 - RHO) / horizon)
    tail = t[horizon:].astype(np.float64)
    naive = RHO * math.log(horizon + 1) ** 2 * (1 / np.log(tail) ** 2 - 1 / np.log(tail + 1) ** 2)
    assert np.allclose(g[horizon:], naive, rtol=1e-7, atol=0)
    assert np.all(g > 0)
    assert np.all(np.diff(g) <= 0)
    assert np.all(np.cumsum(g) <= 1.0 + 1e-12)
    remainder = gamma_remainder(int(t[-1]), horizon)
    assert remainder == pytest.approx(RHO * (math.log1p(horizon) / math.log1p(t[-1])) ** 2)
    assert float(g.sum()) + remainder == pytest.approx(1.0, abs=1e-12)
    assert gamma_remainder(0, horizon) == pytest.approx(1.0)
    assert gamma_remainder(horizon, horizon) == pytest.approx(RHO)


@pytest.mark.parametrize("start", [10**6, 10**9, 10**12, 10**15])
def test_gamma_far_out_is_still_exact_and_monotone(start: int) -> None:
    """A daemon runs for years: blocks of a million indices far out sum to what the closed
    form says is left between their ends (no cancellation in the difference of logs), and
    the sequence keeps falling, slowly (like 1/(t ln(t)^3))."""
    t = np.arange(start, start + 1_000_000)
    g = gamma(t, 50)
    block = gamma_remainder(start - 1, 50) - gamma_remainder(start + 999_999, 50)
    assert float(g.sum()) == pytest.approx(block, rel=1e-6)
    assert np.all(g > 0) and np.all(np.diff(g) <= 0)
    asymptote = 2 * RHO * math.log(51) ** 2 / (start * math.log(start) ** 3)
    assert float(g[0]) == pytest.approx(asymptote, rel=0.1)


def test_gamma_takes_scalars_at_known_values_and_refuses_indices_below_one() -> None:
    """rho = 0.1, H = 50: 0.018 over the horizon, 9.80e-4 at t = 51 (its sum to t = 100 is
    about the whole 1/t^2 tail with rho 0.05 there), 3.14e-4 at 100, 9.37e-6 at 1,000,
    1.59e-7 at 20,000 (the old sequence: 6.3e-9)."""
    assert RHO == 0.1
    assert float(gamma(1, 50)) == pytest.approx(0.9 / 50)
    assert float(gamma(50, 50)) == pytest.approx(0.9 / 50)
    expected = {51: 9.8047e-4, 100: 3.1399e-4, 1000: 9.3734e-6, 20_000: 1.5915e-7}
    for t, value in expected.items():
        assert float(gamma(t, 50)) == pytest.approx(value, rel=1e-4), t
    assert gamma_remainder(100, 50) == pytest.approx(0.1 * (math.log(51) / math.log(101)) ** 2)
    with pytest.raises(ValueError, match="start at 1"):
        gamma(0, 50)
    with pytest.raises(ValueError, match="after must be >= 0"):
        gamma_remainder(-1, 50)


def test_a_fleet_whose_discoveries_grow_with_its_trials_keeps_a_level_falling_like_a_log() -> None:
    """D about 0.15 t (a fleet promoting 15% of its trials): from trial 100 to trial 20,000
    alpha_t falls like 1/ln(t)^3, by about 10x; the earlier tail 0.05 H / (t (t - 1)) fell by
    over 200x (like 1/t). At H = 50 this gamma is never below that one past the horizon."""
    t = np.array([100, 500, 1000, 20_000])
    levels = e_lond_alpha(ALPHA, t, 0.15 * t, 50)
    assert np.all(np.diff(levels) < 0)
    assert levels[0] / levels[-1] == pytest.approx((math.log(20_001) / math.log(101)) ** 3, rel=0.1)
    earlier = ALPHA * 0.05 * 50 / (t * (t - 1.0)) * (0.15 * t + 1)
    assert earlier[0] / earlier[-1] > 200
    past = np.arange(51, 1_000_001, dtype=np.float64)
    assert np.all(gamma(past, 50) >= 0.05 * 50 / (past * (past - 1)))


def test_e_lond_alpha_grows_with_discoveries_and_is_capped_at_alpha() -> None:
    """alpha_t = alpha gamma_t (D + 1): the first trial of a fresh fleet at 0.05 x 0.018,
    ten discoveries multiply it by 11, and it never exceeds alpha."""
    assert float(e_lond_alpha(ALPHA, 1, 0, 50)) == pytest.approx(ALPHA * 0.9 / 50)
    assert float(e_lond_alpha(ALPHA, 7, 10, 50)) == pytest.approx(ALPHA * 0.9 / 50 * 11)
    assert float(e_lond_alpha(ALPHA, 1, 1000, 50)) == ALPHA
    levels = e_lond_alpha(ALPHA, np.array([1, 60, 60]), np.array([0, 0, 5]), 50)
    assert levels.shape == (3,)
    assert levels[2] == pytest.approx(6 * levels[1])
    with pytest.raises(ValueError, match="discoveries must be >= 0"):
        e_lond_alpha(ALPHA, 1, -1, 50)


def test_level_round_trips_and_refuses_malformed_fields() -> None:
    level = FdrLevel(3, 0.019, 2, 0.00285)
    assert FdrLevel.from_dict(level.to_dict()) == level
    cases: list[tuple[dict[str, object], str]] = [
        ({"index": 0}, "index must be an integer >= 1"),
        ({"discoveries": -1}, "discoveries must be an integer >= 0"),
        ({"alpha": 0.0}, r"alpha must be a number in \(0, 1\]"),
        ({"gamma": "x"}, "gamma must be a number"),
        ({"index": True}, "index must be an integer"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            FdrLevel.from_dict({**level.to_dict(), **change})


# -- the policies -----------------------------------------------------------------------------


def test_per_symbol_needs_no_index_and_sets_no_level() -> None:
    policy = PerSymbol()
    assert (policy.name, policy.indexed) == ("per_symbol", False)
    assert policy.claim(ALPHA) is None
    assert policy.level(FdrLevel(1, 0.019, 0, 0.00095), ALPHA) is None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _e_lond(storage: RegistryStorage, clock: Clock, horizon: int = 50) -> ELond:
    return ELond(FleetFdr(storage, horizon=horizon, rho=RHO), refresh_seconds=10, clock=clock)


def test_e_lond_claims_distinct_indices_and_levels_follow_the_discoveries() -> None:
    """Trials get indices 1, 2, 3 in order; a discovery counted here raises every later level
    at once, one made on another machine once the copy is re-read (refresh_seconds)."""
    storage, clock = MemoryStorage(), Clock()
    here, there = _e_lond(storage, clock), _e_lond(storage, clock)
    first, second = here.claim(ALPHA), there.claim(ALPHA)
    third = here.claim(ALPHA)
    assert [lv.index for lv in (first, second, third)] == [1, 2, 3]
    assert first.gamma == pytest.approx(0.9 / 50)
    assert first.discoveries == 0
    assert first.alpha == pytest.approx(ALPHA * 0.9 / 50)
    here.discovered(first)
    now = here.level(third, ALPHA)
    assert now is not None and (now.index, now.discoveries) == (3, 1)
    assert now.alpha == pytest.approx(2 * first.alpha)
    assert there.level(second, ALPHA) == second  # its copy is not stale yet
    clock.now = 11
    there.refresh()
    lv = there.level(second, ALPHA)
    assert lv is not None and lv.discoveries == 1
    assert lv.alpha == pytest.approx(2 * second.alpha)
    assert here.level(None, ALPHA) is None
    assert FleetFdr(storage, horizon=50, rho=RHO).read().discoveries == (1,)


class FailingWrites:
    """A storage whose put_if fails (a storage outage) while ``down`` is set."""

    def __init__(self, storage: RegistryStorage) -> None:
        self._storage, self.down = storage, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        if self.down:
            raise OSError("injected: storage unreachable")
        return self._storage.put_if(key, data, tag)


def test_a_discovery_whose_write_fails_counts_here_and_is_written_by_the_next_refresh() -> None:
    """Never lost in this process, never counted twice: D stays 1 here while the write fails,
    and the fleet's record gets it once the storage is back."""
    inner = MemoryStorage()
    storage, clock = FailingWrites(inner), Clock()
    policy = _e_lond(storage, clock)
    level = policy.claim(ALPHA)
    storage.down = True
    policy.discovered(level)  # never raises
    assert policy.discoveries == 1
    with pytest.raises(OSError, match="unreachable"):
        policy.refresh()
    assert FleetFdr(inner, horizon=50, rho=RHO).read().discoveries == ()
    storage.down = False
    policy.refresh()
    policy.refresh()
    assert FleetFdr(inner, horizon=50, rho=RHO).read().discoveries == (1,)
    assert policy.discoveries == 1


def test_a_claim_against_an_unreachable_storage_raises_for_the_caller() -> None:
    storage = FailingWrites(MemoryStorage())
    storage.down = True
    with pytest.raises(OSError):
        _e_lond(storage, Clock()).claim(ALPHA)


def test_open_policy_by_name_and_a_fleet_started_with_another_horizon_is_refused() -> None:
    """Mixing two gamma sequences could spend more than the budget: a daemon configured with
    another horizon than the record's is refused, naming both."""
    storage = MemoryStorage()
    assert isinstance(open_policy(FdrConfig("per_symbol"), storage), PerSymbol)
    policy = open_policy(FdrConfig("e_lond", horizon=30), storage)
    assert isinstance(policy, ELond)
    policy.claim(ALPHA)  # the record now exists, with horizon 30
    assert isinstance(open_policy(FdrConfig("e_lond", horizon=30), storage), ELond)
    with pytest.raises(FdrMismatch, match=r"horizon 30.*configured with 50") as info:
        open_policy(FdrConfig("e_lond", horizon=50), storage)
    assert isinstance(info.value, RegistryError)


def test_a_fleet_started_by_an_earlier_release_is_refused_naming_what_differs() -> None:
    """fdr.json of the release with the 1/t^2 tail (no "gamma" field, rho 0.05) is not run
    with this sequence: refused on rho, and on the shape once rho agrees; moving the document
    aside starts a new procedure. A record of another shape is no ELond either."""
    storage = MemoryStorage()
    legacy = {"policy": "e_lond", "horizon": 50, "rho": 0.05, "next_index": 7, "discoveries": [3]}
    storage.put(FDR_FILE, json.dumps(legacy).encode())
    with pytest.raises(FdrMismatch, match=r"rho 0\.05, this daemon is configured with 0\.1"):
        open_policy(FdrConfig("e_lond"), storage)
    storage.put(FDR_FILE, json.dumps({**legacy, "rho": RHO}).encode())
    with pytest.raises(FdrMismatch, match=f"gamma '{LEGACY_SHAPE}'.*move .*{FDR_FILE} aside"):
        open_policy(FdrConfig("e_lond"), storage)
    fresh = MemoryStorage()
    open_policy(FdrConfig("e_lond"), fresh).claim(ALPHA)
    (stored,) = [fresh.get(FDR_FILE)]
    assert stored is not None and json.loads(stored.data)["gamma"] == GAMMA_SHAPE
    with pytest.raises(ValueError, match="the record has 'flat_then_t2'"):
        ELond(FleetFdr(fresh, horizon=50, rho=RHO, shape=LEGACY_SHAPE))


def test_fdr_config_refuses_unknown_policies_and_bad_horizons() -> None:
    with pytest.raises(ValueError, match=r"policy must be one of \['e_lond', 'per_symbol'\]"):
        FdrConfig("bh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="horizon must be an integer >= 1"):
        FdrConfig(horizon=0)


# -- settings ---------------------------------------------------------------------------------


@pytest.fixture
def no_ctd_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("CTD_PROMOTION_FDR", "CTD_PROMOTION_FDR_HORIZON"):
        monkeypatch.delenv(name, raising=False)
    yield


def test_settings_default_to_e_lond_and_reach_the_policy_config(no_ctd_env: None) -> None:
    assert load_settings().promotion_fdr_config == FdrConfig("e_lond", 50)
    built = load_settings(promotion_fdr="per_symbol", promotion_fdr_horizon=200)
    assert built.promotion_fdr_config == FdrConfig("per_symbol", 200)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CTD_PROMOTION_FDR", "bh", "CTD_PROMOTION_FDR: Input should be 'e_lond' or 'per_symbol'"),
        ("CTD_PROMOTION_FDR_HORIZON", "0", "CTD_PROMOTION_FDR_HORIZON: .*greater than or equal"),
    ],
)
def test_a_bad_policy_setting_fails_start_up_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message):
        load_settings()


def test_log_of_the_first_level_is_what_the_dashboard_shows() -> None:
    """The first trial of a fresh fleet promotes at an e-value of about 1,111 (log10 3.05)."""
    level = float(e_lond_alpha(ALPHA, 1, 0, 50))
    assert -math.log10(level) == pytest.approx(3.046, abs=1e-3)
