"""What a training run keeps beside its model so that candidates can be compared later.

``train_symbol`` writes two kinds of evidence into its output directory:

``predictions.csv``, the evaluation CSV: one row per test-split row, in time order,
with the columns

- ``row``: the row's index in ``training_matrix(bars)`` (metadata ``split.test`` is
  the range);
- ``ts``: the row's bar, Unix seconds UTC (its features end at that bar);
- ``label``: the row's label, by the run's target (``trainers.targets``, metadata
  ``config.target``, absent: direction) over ``h`` = ``horizon_bars`` bars:
  ``direction``: 1 if ``close[t+h] > close[t]``, else 0; ``return``: the forward log
  return ``log(close[t+h] / close[t])``;
- ``fwd_return``: the row's forward log return as ``TrainingMatrix.fwd_returns``
  holds it (what directional accuracy and hit rate are measured against);
- then one column per scored candidate (also those a gate failed), named as
  ``evidence_names`` names it (its trainer, in metadata ``candidates`` order): from
  its exported ONNX model, the candidate's P(up) (direction) or predicted forward
  log return (return) on the row. A candidate an error stopped before scoring has
  no column.

Floats are written with ``repr``, so they read back bit for bit. No comment line:
any CSV reader takes the file as it is.

``candidates/<name>.onnx``: the exported model of every candidate that was not chosen,
passing or failed by a gate (a candidate an error stopped has no trustworthy file).
The chosen one is ``model.onnx``.

Both are written whole (temp file, rename), so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import os
import re
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

from trainers.targets import RETURN, Target

if TYPE_CHECKING:  # types only: the registry imports the names here without the training stack
    from trainers.candidate import CandidateRun
    from trainers.features import TrainingMatrix

PREDICTIONS_FILE: Final = "predictions.csv"
CANDIDATES_DIR: Final = "candidates"
FIXED_COLUMNS: Final = ("row", "ts", "label", "fwd_return")

_SAFE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
"""A name that is safe as a file name and a CSV column on every platform."""
_MAX_NAME: Final = 64


def evidence_names(trainers: Sequence[str]) -> list[str]:
    """One unique, path-safe name per candidate, in order: its trainer name; a repeated
    name gets ``-2``, ``-3``...; a name unsafe as a file name, or one of
    ``FIXED_COLUMNS``, becomes ``candidate-<position>``. Names reach paths only through
    this, so a trainer name can never point outside ``candidates/``."""
    names: list[str] = []
    for position, trainer in enumerate(trainers):
        base = trainer
        if (
            not _SAFE_NAME.fullmatch(trainer)
            or len(trainer) > _MAX_NAME
            or trainer in FIXED_COLUMNS
        ):
            base = f"candidate-{position}"
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}-{k}"
        names.append(name)
    return names


def candidate_file(out_dir: Path, name: str) -> Path:
    """Where a losing candidate's ONNX file is kept: ``out_dir/candidates/<name>.onnx``."""
    if not _SAFE_NAME.fullmatch(name):
        raise ValueError(f"candidate name {name!r} is not a safe file name")
    return out_dir / CANDIDATES_DIR / f"{name}.onnx"


def keep_candidate(path: Path, out_dir: Path, name: str) -> Path:
    """Move a candidate's exported model to ``candidate_file(out_dir, name)``."""
    target = candidate_file(out_dir, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    path.replace(target)
    return target


def clear_candidates(out_dir: Path) -> None:
    """Remove ``out_dir/candidates``: an earlier run's losers must not pass for this run's."""
    shutil.rmtree(out_dir / CANDIDATES_DIR, ignore_errors=True)


def write_predictions(
    out_dir: Path,
    runs: Sequence[CandidateRun],
    matrix: TrainingMatrix,
    test: slice,
) -> Path:
    """Write ``out_dir/predictions.csv`` (the module docstring's columns) atomically; return it.

    The label follows ``matrix.target``: a direction label is written as 0 / 1, a
    return label with ``repr`` like every float.

    A run gets a column when it has predictions for the test split (the block keyed by
    ``test.start``) of the right length; the others (stopped by an error) have none.
    """
    rows = range(len(matrix))[test]
    names = evidence_names([r.record.trainer for r in runs])
    columns: list[tuple[str, npt.NDArray[np.float64]]] = []
    for run, name in zip(runs, names, strict=True):
        block = None if run.predictions is None else run.predictions.blocks.get(test.start)
        if block is not None and len(block) == len(rows):
            columns.append((name, np.asarray(block, dtype=np.float64)))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*FIXED_COLUMNS, *(name for name, _ in columns)])
    for i, row in enumerate(rows):
        writer.writerow(
            [
                row,
                int(matrix.ts[row]),
                _label(float(matrix.y[row]), matrix.target),
                repr(float(matrix.fwd_returns[row])),
                *(repr(float(p[i])) for _, p in columns),
            ]
        )
    path = out_dir / PREDICTIONS_FILE
    _write_atomic(path, buffer.getvalue().encode("utf-8"))
    return path


def _label(value: float, target: Target) -> str | int:
    return repr(value) if target == RETURN else int(value)


def read_predictions(path: Path) -> dict[str, npt.NDArray[np.float64]]:
    """The evaluation CSV as columns (every column as float64, ``row`` and ``ts`` exact up to
    2**53). ValueError if the header does not start with ``FIXED_COLUMNS``."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if tuple(header[: len(FIXED_COLUMNS)]) != FIXED_COLUMNS:
            raise ValueError(f"{path}: header {header[:4]} does not start with {FIXED_COLUMNS}")
        values = np.array([[float(v) for v in line] for line in reader], dtype=np.float64)
    values = values.reshape(-1, len(header))
    return {name: values[:, j] for j, name in enumerate(header)}


def _write_atomic(path: Path, data: bytes) -> None:
    """Temp file beside ``path``, fsync, rename: ``path`` is the old bytes or the new."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
