"""Kafka record batches on the wire, for tests: build, corrupt, produce raw, fetch raw.

A client library refuses to write a corrupt batch, so the corrupt-batch tests
build one with kafka-python's batch builder, damage it, and send it in a raw
Produce request (v3) over a socket; the broker (tansu) stores it as given.
``fetch_codecs`` reads the batches of a partition back in a raw Fetch request
(v4) and reports each batch's compression codec, which no client exposes.
"""

from __future__ import annotations

import socket
import struct
from typing import Final

from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords
from kafka.record.util import calc_crc32c

CODECS: Final = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
_CRC_OFFSET: Final = DefaultRecordBatch.CRC_OFFSET
_ATTRIBUTES_OFFSET: Final = DefaultRecordBatch.ATTRIBUTES_OFFSET
_HEADER_SIZE: Final = DefaultRecordBatch.HEADER_STRUCT.size


class WireError(RuntimeError):
    pass


def record_batch(records: list[tuple[bytes | None, bytes]], codec: str = "none") -> bytearray:
    """A v2 record batch of (key, value) records, compressed with ``codec``."""
    builder = DefaultRecordBatchBuilder(2, CODECS[codec], False, -1, -1, -1, 16 << 20)
    for i, (key, value) in enumerate(records):
        builder.append(i, None, key, value, [])
    return bytearray(builder.build())


def _fix_crc(batch: bytearray) -> bytearray:
    struct.pack_into(">I", batch, _CRC_OFFSET, calc_crc32c(memoryview(batch)[_ATTRIBUTES_OFFSET:]))
    return batch


def corrupt_payload(batch: bytearray) -> bytearray:
    """Damage the (compressed) records of ``batch`` and recompute its CRC: the batch header
    stays valid and the CRC check passes, but decompression fails."""
    if batch[_ATTRIBUTES_OFFSET + 1] & 0x07 == 0:
        raise ValueError("corrupt_payload needs a compressed batch")
    damaged = bytearray(batch)
    middle = _HEADER_SIZE + (len(damaged) - _HEADER_SIZE) // 2
    for i in range(middle - 4, middle + 4):
        damaged[i] ^= 0xA5
    return _fix_crc(damaged)


def corrupt_crc(batch: bytearray) -> bytearray:
    """Flip one bit of the last record byte without fixing the CRC: a CRC mismatch."""
    damaged = bytearray(batch)
    damaged[-1] ^= 0x01
    return damaged


def _address(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.split(",", maxsplit=1)[0].rpartition(":")
    return host, int(port)


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def _round_trip(bootstrap: str, api_key: int, version: int, body: bytes) -> bytes:
    header = struct.pack(">hhi", api_key, version, 0x7E57) + _string("ctd-tests")
    request = header + body
    with socket.create_connection(_address(bootstrap), timeout=10) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", _recv(sock, 4))[0]
        reply = _recv(sock, size)
    if struct.unpack_from(">i", reply)[0] != 0x7E57:
        raise WireError("reply with a foreign correlation id")
    return reply[4:]


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise WireError("broker closed the connection")
        data += chunk
    return data


def raw_produce(bootstrap: str, topic: str, partition: int, batch: bytes) -> int:
    """Append ``batch`` as it is to ``topic``/``partition`` (acks=all); return its base offset.

    Single-broker clusters only (the bundled broker): the request goes to the
    first bootstrap server, which must lead the partition.
    """
    body = struct.pack(">hhi", -1, -1, 10_000)  # null transactional id, acks=all, timeout
    body += struct.pack(">i", 1) + _string(topic)
    body += struct.pack(">iii", 1, partition, len(batch)) + bytes(batch)
    reply = _round_trip(bootstrap, 0, 3, body)
    pos = 4 + 2 + struct.unpack_from(">h", reply, 4)[0]  # topic count, topic name
    _count, _partition, error, base = struct.unpack_from(">iihq", reply, pos)
    if error:
        raise WireError(f"produce to {topic}/{partition} failed with error code {error}")
    return int(base)


def fetch_codecs(bootstrap: str, topic: str, partition: int) -> list[str]:
    """The compression codec of every record batch of ``topic``/``partition``, in order."""
    body = struct.pack(">iiiib", -1, 500, 1, 64 << 20, 0)  # replica, wait, min, max, isolation
    body += struct.pack(">i", 1) + _string(topic)
    body += struct.pack(">iiqi", 1, partition, 0, 64 << 20)
    reply = _round_trip(bootstrap, 1, 4, body)
    pos = 4 + 4  # throttle time, topic count
    pos += 2 + struct.unpack_from(">h", reply, pos)[0]  # topic name
    _count, _partition, error, _hw, _lso, aborted = struct.unpack_from(">iihqqi", reply, pos)
    if error:
        raise WireError(f"fetch of {topic}/{partition} failed with error code {error}")
    pos += 4 + 4 + 2 + 8 + 8 + 4 + max(aborted, 0) * 16
    size = struct.unpack_from(">i", reply, pos)[0]
    records = MemoryRecords(reply[pos + 4 : pos + 4 + size])
    names = {v: k for k, v in CODECS.items()}
    codecs = []
    while (batch := records.next_batch()) is not None:
        codecs.append(names[batch.compression_type])
    return codecs
