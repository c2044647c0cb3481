"""Which files of a run are evidence, and which versions' evidence retention deletes.

A version's evidence (``trainers.evidence``: the evaluation CSV and the ONNX files of
the candidates the run did not choose) is kept beside its model so candidates stay
comparable later, for the ``keep`` newest complete versions of a symbol only: a symbol
retrained every hour would otherwise fill the registry with models nobody serves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from deploy.versions import VERSION_PATTERN
from trainers.evidence import CANDIDATES_DIR, PREDICTIONS_FILE

DEFAULT_KEEP_EVIDENCE: Final = 5
"""Versions per symbol whose evidence is kept (``CTD_KEEP_CANDIDATE_VERSIONS``)."""
EVIDENCE_FILE: Final = re.compile(
    rf"{re.escape(PREDICTIONS_FILE)}|{re.escape(CANDIDATES_DIR)}/[A-Za-z0-9][A-Za-z0-9_-]*\.onnx"
)
"""An evidence file's name relative to its version; anything else in a staging dir is not copied."""
EVIDENCE_ENTRIES: Final = frozenset({PREDICTIONS_FILE, CANDIDATES_DIR})
"""The entries of a version directory that hold evidence (a file and a directory)."""


def staged_evidence(staging_dir: Path) -> list[tuple[str, Path]]:
    """(name relative to the version, file) of every evidence file in ``staging_dir``."""
    found = [staging_dir / PREDICTIONS_FILE, *sorted((staging_dir / CANDIDATES_DIR).glob("*"))]
    return [
        (name, path)
        for path in found
        if path.is_file()
        and EVIDENCE_FILE.fullmatch(name := path.relative_to(staging_dir).as_posix())
    ]


def evidence_to_prune(
    keys: Iterable[str], keep: int, complete: tuple[str, str]
) -> dict[str, list[str]]:
    """Version -> its evidence entries to delete, from a listing of one symbol's keys.

    Only complete versions (holding both ``complete`` files) count and lose evidence:
    an incomplete one may be a copy in flight. The ``keep`` newest keep theirs.
    """
    files: dict[str, set[str]] = {}
    for key in keys:
        version, _, rest = key.partition("/")
        if VERSION_PATTERN.fullmatch(version):
            files.setdefault(version, set()).add(rest.split("/")[0])
    done = sorted(v for v, f in files.items() if set(complete) <= f)
    kept = set(done[-keep:]) if keep else set()
    return {
        v: sorted(EVIDENCE_ENTRIES & files[v])
        for v in done
        if v not in kept and EVIDENCE_ENTRIES & files[v]
    }
