"""A message's arrays as one Array on the wire: fewer objects for Flower's Deployment Engine to move.

Flower (1.42) stores every part of a message as its own object (the Message, its RecordDict, each record, each
Array and each Array's chunk) and a deployed node pulls, and pushes back, each object in its own request to the
SuperLink; every such request also authenticates the node and checks the run in the SuperLink's database. A model
of six tensors is 13 objects of a train message's 16, and a round of three nodes a few hundred requests, which on a
small server cost more than the training (``simulations/benchmarks/results/deployment.md``).

:func:`pack` turns an ArrayRecord into one of a single Array (:data:`PACKED_KEY`) whose bytes are a JSON header
(each Array's key, dtype, shape, stype and length) followed by every Array's own bytes, unchanged;
:func:`unpack` gives back the same Arrays, bit for bit. A message is packed only where both ends speak it: the
ServerApp packs what it sends on a deployment, the ClientApp's mod unpacks what it receives
and packs its reply only if what it received was packed, so a stock Flower ServerApp (which never packs) gets plain
replies, and a packed record reaching code that does not expect it fails on the missing key, not silently.

It works on Flower's ArrayRecord, Array and RecordDict without importing Flower (``shared_models`` depends on torch
and numpy only): new records and arrays are made with the classes of the ones given. The ClientApp's side is
:func:`client.client_app.packed_arrays_mod`, the ServerApp's :class:`server.packed_grid.PackedArraysGrid`.

>>> import numpy as np
>>> from flwr.app import Array, ArrayRecord
>>> record = ArrayRecord({"w": Array(np.ones((2, 3), np.float32)), "n": Array(np.array(7, np.int64))})
>>> packed = pack(record)
>>> list(packed.keys()), is_packed(packed)
(['fedge.packed-arrays'], True)
>>> same = unpack(packed)
>>> list(same.keys()), same["w"].numpy().tolist(), int(same["n"].numpy())
(['w', 'n'], [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], 7)
"""

from __future__ import annotations

import json
import struct
from typing import Any

from shared_models.errors import FedgeError

#: the single Array of a packed ArrayRecord (and the stype that marks its bytes)
PACKED_KEY = "fedge.packed-arrays"
PACKED_STYPE = "fedge.packed-arrays/1"
_HEADER_LENGTH = struct.Struct("<Q")
ArrayRecord = Any  # Flower's flwr.app.ArrayRecord (and RecordDict, Array below), used by duck typing
RecordDict = Any


class PackedArraysError(FedgeError):
    """A packed ArrayRecord whose bytes do not hold what their header says (truncated or altered on the way)."""


def is_packed(record: ArrayRecord) -> bool:
    return len(record) == 1 and PACKED_KEY in record and record[PACKED_KEY].stype == PACKED_STYPE


def pack(record: ArrayRecord) -> ArrayRecord:
    """``record`` as an ArrayRecord of one Array (see the module's docstring); an empty or packed record as is."""
    if not len(record) or is_packed(record):
        return record
    entries, blobs = [], []
    array_class = type(next(iter(record.values())))
    for key, array in record.items():
        data = bytes(array.data)
        entries.append(
            {"key": key, "dtype": array.dtype, "shape": list(array.shape), "stype": array.stype, "n": len(data)}
        )
        blobs.append(data)
    header = json.dumps(entries, separators=(",", ":")).encode()
    data = b"".join([_HEADER_LENGTH.pack(len(header)), header, *blobs])
    packed = array_class(dtype="uint8", shape=(len(data),), stype=PACKED_STYPE, data=data)
    return type(record)({PACKED_KEY: packed})


def unpack(record: ArrayRecord) -> ArrayRecord:
    """The ArrayRecord :func:`pack` was given; a record that is not packed as is."""
    if not is_packed(record):
        return record
    array_class = type(record[PACKED_KEY])
    data = memoryview(record[PACKED_KEY].data)
    try:
        (length,) = _HEADER_LENGTH.unpack_from(data)
        entries = json.loads(bytes(data[_HEADER_LENGTH.size : _HEADER_LENGTH.size + length]))
        offset = _HEADER_LENGTH.size + length
        arrays = {}
        for entry in entries:
            end = offset + int(entry["n"])
            if end > len(data):
                raise ValueError(f"{entry['key']} ends at byte {end} of {len(data)}")
            arrays[str(entry["key"])] = array_class(
                dtype=str(entry["dtype"]),
                shape=tuple(entry["shape"]),
                stype=str(entry["stype"]),
                data=bytes(data[offset:end]),
            )
            offset = end
    except (struct.error, ValueError, KeyError, TypeError) as e:
        raise PackedArraysError(
            f"a packed ArrayRecord that cannot be read back ({e}): its bytes were cut or changed"
        ) from e
    if offset != len(data):
        raise PackedArraysError(f"a packed ArrayRecord with {len(data) - offset} bytes more than its header lists")
    return type(record)(arrays, keep_input=True)


def pack_content(content: RecordDict, cache: dict[int, ArrayRecord] | None = None) -> RecordDict:
    """``content`` (changed in place) with each of its ArrayRecords packed. ``cache`` (by the record's id) packs a
    record that several messages share, as a strategy's messages share the global model, once."""
    for name, record in list(content.array_records.items()):
        if cache is None:
            content[name] = pack(record)
        else:
            if id(record) not in cache:
                cache[id(record)] = pack(record)
            content[name] = cache[id(record)]
    return content


def unpack_content(content: RecordDict) -> bool:
    """Unpack ``content``'s ArrayRecords in place; whether any was packed."""
    packed = False
    for name, record in list(content.array_records.items()):
        if is_packed(record):
            content[name] = unpack(record)
            packed = True
    return packed
