"""Registry storage by URL: the one table a new backend is added to.

``s3://bucket/prefix`` opens ``S3Storage`` (extra ``s3``, imported only then,
so a local registry never needs s3fs); a plain path or a ``file://`` URL opens
``LocalStorage``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final
from urllib.parse import urlsplit

from deploy.registry.local import LocalStorage
from deploy.registry.storage import RegistryStorage

Opener = Callable[[str, Path], RegistryStorage]

_SCHEME: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def _local(url: str, cache_dir: Path) -> RegistryStorage:
    parts = urlsplit(url) if _SCHEME.match(url) else None
    if parts is None:
        return LocalStorage(Path(url))
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise ValueError(f"a file registry URL looks like file:///path, got {url!r}")
    return LocalStorage(Path(parts.path))


def _s3(url: str, cache_dir: Path) -> RegistryStorage:
    from deploy.registry.s3 import S3Storage  # noqa: PLC0415 - s3fs only when asked for

    return S3Storage(url, cache_dir)


STORAGES: Final[Mapping[str, Opener]] = MappingProxyType({"file": _local, "s3": _s3})
"""URL scheme -> how to open it; a URL without a scheme is a local path."""


def open_storage(url: str, cache_dir: Path) -> RegistryStorage:
    """The storage ``url`` names; ``cache_dir`` holds local copies of remote objects.

    Raises ValueError for a scheme with no backend (naming the ones there are), and
    ImportError naming the extra to install when the backend's package is missing.
    """
    match = _SCHEME.match(url)
    scheme = match.group(1).lower() if match else "file"
    try:
        opener = STORAGES[scheme]
    except KeyError:
        supported = ", ".join(f"{s}://" for s in sorted(STORAGES))
        raise ValueError(
            f"registry URL {url!r}: no storage for scheme {scheme!r}; supported: {supported} "
            "or a local path"
        ) from None
    return opener(url, Path(cache_dir))
