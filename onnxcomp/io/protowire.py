"""The protobuf wire format, walked without decoding: where fields lie in serialized bytes.

:mod:`onnxcomp.io.loader` uses it to leave a model file's big initializers on disk (their raw
data's offsets); :mod:`onnxcomp.encode.protowalk` to cut tensor payloads into streams.
"""
from __future__ import annotations

_GRAPH_IN_MODEL, _INIT_IN_GRAPH, _RAW_IN_TENSOR = 7, 5, 9


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7


def _skip_group(buf: bytes, i: int, end: int, num: int) -> int:
    """The position after the end-group tag matching group ``num`` that starts at ``i``."""
    for inner, wt, _, j in _fields(buf, i, end, group=num):
        if wt == 4:  # the matching end-group tag (nested groups were skipped whole)
            return j
    raise ValueError("group without its end tag")


def _fields(buf: bytes, start: int, end: int, group: int | None = None):
    """(field number, wire type, value start, value end) of each field of one message.

    Groups (wire types 3/4, deprecated but valid protobuf, e.g. unknown fields written by other
    tools) are skipped whole: their contents stay in the skeleton. Inside a group, the matching
    end-group tag is yielded last, as wire type 4."""
    i = start
    while i < end:
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            _, j = _varint(buf, i)
        elif wt == 1:
            j = i + 8
        elif wt == 5:
            j = i + 4
        elif wt == 2:
            n, i = _varint(buf, i)
            j = i + n
        elif wt == 3:
            j = _skip_group(buf, i, end, num)
        elif wt == 4 and num == group:
            yield num, wt, i, i
            return
        else:
            raise ValueError(f"unexpected wire type {wt}")
        if j > end:
            raise ValueError("field runs past its message")
        yield num, wt, i, j
        i = j


def initializer_payloads(buf: bytes) -> list[tuple[int, int] | None] | None:
    """(offset, length) of each top-level initializer's raw_data in serialized ModelProto bytes
    (None for an initializer without raw_data), in the order protobuf parses them; None when the
    layout is unusual (the graph or a raw_data field written twice: protobuf would merge them)."""
    try:
        graphs = [(a, b) for num, wt, a, b in _fields(buf, 0, len(buf)) if num == _GRAPH_IN_MODEL and wt == 2]
        if len(graphs) != 1:
            return None
        out: list[tuple[int, int] | None] = []
        for num, wt, a, b in _fields(buf, *graphs[0]):
            if num != _INIT_IN_GRAPH or wt != 2:
                continue
            raws = [(x, y - x) for n, w, x, y in _fields(buf, a, b) if n == _RAW_IN_TENSOR and w == 2]
            if len(raws) > 1:
                return None
            out.append(raws[0] if raws else None)
        return out
    except ValueError:
        return None
