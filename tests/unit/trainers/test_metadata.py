"""metadata.json is one typed document with a schema version, checked on every read."""

from __future__ import annotations

import json
import math

import pytest

from monitors.base import MonitorWarning
from tests.support.metadata import sample_metadata
from trainers.errors import MetadataError
from trainers.metadata import SCHEMA_VERSION, ModelMetadata, WalkForwardRecord


def test_a_document_round_trips_through_json_with_its_schema_version() -> None:
    """to_json then from_json gives the same record; the file names its schema version."""
    meta = sample_metadata("AAA")
    doc = json.loads(meta.to_json())
    assert doc["schema_version"] == SCHEMA_VERSION
    assert ModelMetadata.from_json(meta.to_json(), "m.json") == meta
    assert meta.test_accuracy == 0.6 and meta.chosen is meta.candidates[0]


def test_an_unknown_schema_version_is_refused_naming_the_file() -> None:
    doc = {**sample_metadata().to_dict(), "schema_version": 7}
    with pytest.raises(MetadataError, match=r"^reg/AAA/v/metadata.json: schema_version 7 "):
        ModelMetadata.from_dict(doc, "reg/AAA/v/metadata.json")


def test_a_file_from_before_the_field_existed_reads_as_version_1() -> None:
    """Files written before schema_version existed have version 1's layout."""
    doc = sample_metadata().to_dict()
    del doc["schema_version"]
    assert ModelMetadata.from_dict(doc).schema_version == 1


def test_a_bad_field_is_named() -> None:
    doc = sample_metadata().to_dict()
    doc["data"]["n_bars"] = "many"
    with pytest.raises(MetadataError, match=r"field data\.n_bars"):
        ModelMetadata.from_dict(doc, "x")
    with pytest.raises(MetadataError, match="not JSON"):
        ModelMetadata.from_json(b"{", "x")


def test_non_finite_numbers_are_written_as_null() -> None:
    """JSON has no NaN or infinity: a warning's infinite value is stored as null."""
    warning = MonitorWarning("non_finite", 3, "train loss is inf at step 3", math.inf)
    meta = sample_metadata().model_copy(update={"warnings": (warning,)})
    doc = json.loads(meta.to_json())
    assert doc["warnings"][0]["value"] is None


def test_walk_forward_statistics_sit_beside_the_fold_keys_in_the_file() -> None:
    """In the file each metric's mean/std is a key of walk_forward; in memory it is ``stats``."""
    doc = {
        "folds": 3,
        "skipped": None,
        "error": None,
        "per_fold": [],
        "accuracy": {"mean": 0.55, "std": 0.02},
    }
    record = WalkForwardRecord.model_validate(doc)
    assert record.accuracy_std == 0.02
    assert record.model_dump(mode="json") == doc
