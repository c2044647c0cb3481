"""A daemon whose e-LOND horizon differs from the one its fleet's procedure was started with
does not start (a running procedure's gamma sequence cannot change), and says which setting."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from daemon.app import Daemon
from daemon.errors import SettingsError
from daemon.settings import Settings
from deploy.registry import LocalStorage
from deploy.registry.fleet_fdr import FleetFdr

pytestmark = [pytest.mark.integration]


def test_a_horizon_other_than_the_fleets_fails_start_up_naming_the_setting(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(http_port=0, promotion_fdr_horizon=50)
    FleetFdr(LocalStorage(settings.paths.registry), horizon=30, rho=0.05).claim()
    with pytest.raises(SettingsError, match=r"CTD_PROMOTION_FDR_HORIZON: .*horizon 30") as info:
        Daemon(settings, bootstrap_servers=str(settings.kafka_bootstrap_servers)).start()
    assert "configured with 50" in str(info.value)

    per_symbol = settings_factory(http_port=0, promotion_fdr="per_symbol")
    daemon = Daemon(per_symbol, bootstrap_servers=str(per_symbol.kafka_bootstrap_servers)).start()
    daemon.stop(5)  # per symbol, the fleet's record is not read
