"""The registry every part of ctd uses: ``CTD_REGISTRY_URL``, default ``<data_dir>/registry``."""

from __future__ import annotations

from daemon.settings import Settings
from deploy.registry import Registry, open_storage
from deploy.registry.registry import Claims


def registry_url(settings: Settings) -> str:
    """Where the registry lives: the setting, or the data directory's default."""
    return settings.registry_url or str(settings.paths.registry)


def open_registry(settings: Settings, *, claims: Claims | None = None) -> Registry:
    """The registry of ``settings``; ``claims``: the daemon's fencing (None for the CLI)."""
    storage = open_storage(registry_url(settings), settings.paths.registry_cache)
    return Registry(storage, claims=claims, keep_evidence=settings.keep_candidate_versions)
