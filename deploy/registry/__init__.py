"""The model registry (``registry.py``) over a storage backend (``storage.py``: local, memory)."""

from deploy.registry.ledger import Slots
from deploy.registry.local import LocalStorage
from deploy.registry.memory import MemoryStorage
from deploy.registry.registry import METADATA_FILE, MODEL_FILE, Registry
from deploy.registry.storage import RegistryStorage
from deploy.versions import VERSION_PATTERN, validate_version

__all__ = [
    "METADATA_FILE",
    "MODEL_FILE",
    "VERSION_PATTERN",
    "LocalStorage",
    "MemoryStorage",
    "Registry",
    "RegistryStorage",
    "Slots",
    "validate_version",
]
