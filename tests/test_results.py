"""Cached results are data: a poisoned cache file in the state folder never runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from stemloop.tasks import results

RATE = 16000


class Evil:
    """Unpickling this makes a folder: the stand-in for `os.system(...)`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def poisoned(marker: Path, serializer) -> tuple[bytes, bytes]:
    """(metadata, value) files that run code when Prefect decodes them."""
    from prefect._internal.result_records import ResultRecord, ResultRecordMetadata

    record = ResultRecord(metadata=ResultRecordMetadata(serializer=serializer), result=Evil(marker))
    return record.serialize_metadata(), record.serialize_result()


def test_prefect_itself_would_run_the_poisoned_files(tmp_path: Path):
    """The control: read through Prefect's own decoder, the files run code."""
    from prefect._internal.result_records import ResultRecord
    from prefect.serializers import PickleSerializer

    marker = tmp_path / "ran"
    metadata, value = poisoned(marker, PickleSerializer())
    ResultRecord.deserialize_from_result_and_metadata(result=value, metadata=metadata)
    assert marker.is_dir()


@pytest.mark.parametrize("kind", ["pickle", "compressed/pickle", "json-decoder", "not-json"])
def test_storage_refuses_anything_but_data_only_json(tmp_path: Path, kind: str):
    from prefect.serializers import CompressedSerializer, JSONSerializer, PickleSerializer

    marker = tmp_path / "ran"
    blob = {
        "pickle": lambda: poisoned(marker, PickleSerializer())[0],
        "compressed/pickle": lambda: poisoned(
            marker, CompressedSerializer(serializer=PickleSerializer()))[0],
        "json-decoder": lambda: json.dumps(
            {"serializer": JSONSerializer(object_decoder="os.mkdir").model_dump()}).encode(),
        "not-json": lambda: b"\x80\x04\x95 pickled bytes",
    }[kind]()
    (tmp_path / "key").write_bytes(blob)
    storage = results.KeyStorage(basepath=str(tmp_path))
    with pytest.raises(results.UnsafeResult):
        storage.read_path("key")
    assert not marker.exists()


def test_serializer_round_trips_data_and_records_and_refuses_objects():
    from stemloop.adapt.separate import SeparationRecord

    ser = results.DataOnlyJSON()
    record = SeparationRecord(input="take.wav", sample_rate=48000, channels=2, frames=10,
                              model="m.pt", recipe=None, model_rate=[44100], strength=1.0,
                              chunk_seconds=10.0, overlap=0.25, stems={"dialogue": "d.wav"},
                              seconds=1.5, real_time_factor=0.1, versions={"torch": "2.11.0"})
    assert ser.loads(ser.dumps({"record": record})) == {"record": record}
    assert ser.loads(ser.dumps({"a": [1, 2.5, None, "x"], "b": {"c": True}})) == {
        "a": [1, 2.5, None, "x"], "b": {"c": True}}
    assert ser.loads(ser.dumps((np.float32(0.5), Path("/x")))) == [0.5, "/x"]
    back = ser.loads(ser.dumps(ValueError("bad take")))
    assert isinstance(back, results.PersistedError) and str(back) == "ValueError: bad take"
    with pytest.raises(TypeError, match="cannot persist"):
        ser.dumps({"f": Evil(Path("/nowhere"))})
    with pytest.raises(results.UnsafeResult, match="unknown record"):
        ser.loads(json.dumps({"__stemloop_record__": "Popen", "data": {}}).encode())


@pytest.mark.parametrize("key", ["/etc/hostname", "../outside.json", "missing.json"])
def test_metadata_pointing_outside_the_result_folder_is_refused(tmp_path: Path, key):
    """A key's value must be a regular file inside Prefect's result folder (a copied state
    folder, a FIFO or /dev/zero would otherwise fail the task or hang it)."""
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    (tmp_path / "storage").mkdir()
    (tmp_path / "outside.json").write_text("{}")
    (tmp_path / "storage" / "good.json").write_text('{"a": 1}')
    metadata = json.dumps({"serializer": {"type": "stemloop-json"}, "storage_key": key})
    good = json.dumps({"serializer": {"type": "stemloop-json"}, "storage_key": "good.json"})
    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp_path / "storage"}):
        with pytest.raises(results.UnsafeResult, match="not a result file inside"):
            results.check_metadata(metadata.encode())
        assert results.check_metadata(good.encode()) == good.encode()
