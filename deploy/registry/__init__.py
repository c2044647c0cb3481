"""The model registry (``registry.py``) over a storage backend (``storage.py``: local, memory,
S3), with the claims that fence a fleet's writers (``ledger.py``)."""

from deploy.registry.ledger import Claim, Slots, SlotsState
from deploy.registry.local import LocalStorage
from deploy.registry.memory import MemoryStorage
from deploy.registry.registry import METADATA_FILE, MODEL_FILE, Registry
from deploy.registry.storage import Conflict, RegistryStorage, Stored
from deploy.registry.urls import open_storage
from deploy.versions import VERSION_PATTERN, validate_version

__all__ = [
    "METADATA_FILE",
    "MODEL_FILE",
    "VERSION_PATTERN",
    "Claim",
    "Conflict",
    "LocalStorage",
    "MemoryStorage",
    "Registry",
    "RegistryStorage",
    "Slots",
    "SlotsState",
    "Stored",
    "open_storage",
    "validate_version",
]
