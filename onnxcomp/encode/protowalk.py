"""Walk serialized ONNX protobuf bytes without decoding them: where each tensor's raw data lies
(the cut list :mod:`onnxcomp.encode.pack` separates into typed streams)."""
from __future__ import annotations

from onnxcomp.io.protowire import _fields, _varint  # the wire-format primitives

_DTYPE_KIND = {1: 2, 10: 3, 16: 3, 11: 4, 2: 5, 3: 5, 4: 5, 5: 5, 21: 5, 22: 5}  # TensorProto type -> stream kind

# message field numbers walked: where TensorProtos can sit inside a ModelProto
_GRAPH_IN_MODEL, _FUNCS_IN_MODEL = 7, 25
_NODE, _INIT, _SPARSE_INIT = 1, 5, 15
_FUNC_NODE = 7
_ATTR = 5
_ATTR_T, _ATTR_G, _ATTR_TS, _ATTR_GS, _ATTR_ST, _ATTR_STS = 5, 6, 10, 11, 22, 23
_TENSOR_TYPE, _TENSOR_RAW = 2, 9


def _tensor(buf: bytes, s: int, e: int, cuts: list) -> None:
    dtype, raw = 0, None
    for num, wt, a, b in _fields(buf, s, e):
        if num == _TENSOR_TYPE and wt == 0:
            dtype = _varint(buf, a)[0]
        elif num == _TENSOR_RAW and wt == 2 and b > a:
            raw = (a, b)
    if raw is not None:
        cuts.append((raw[0], raw[1] - raw[0], _DTYPE_KIND.get(dtype, 6)))


def _sparse(buf: bytes, s: int, e: int, cuts: list) -> None:
    for num, wt, a, b in _fields(buf, s, e):
        if num in (1, 2) and wt == 2:
            _tensor(buf, a, b, cuts)


def _node(buf: bytes, s: int, e: int, cuts: list) -> None:
    for num, wt, a, b in _fields(buf, s, e):
        if num != _ATTR or wt != 2:
            continue
        for an, aw, x, y in _fields(buf, a, b):
            if aw != 2:
                continue
            if an in (_ATTR_T, _ATTR_TS):
                _tensor(buf, x, y, cuts)
            elif an in (_ATTR_G, _ATTR_GS):
                _graph(buf, x, y, cuts)
            elif an in (_ATTR_ST, _ATTR_STS):
                _sparse(buf, x, y, cuts)


def _graph(buf: bytes, s: int, e: int, cuts: list) -> None:
    for num, wt, a, b in _fields(buf, s, e):
        if wt != 2:
            continue
        if num == _NODE:
            _node(buf, a, b, cuts)
        elif num == _INIT:
            _tensor(buf, a, b, cuts)
        elif num == _SPARSE_INIT:
            _sparse(buf, a, b, cuts)


def find_cuts(buf: bytes) -> list[tuple[int, int, int]]:
    """(offset, length, stream kind) of every tensor payload in serialised ModelProto bytes."""
    cuts: list[tuple[int, int, int]] = []
    for num, wt, a, b in _fields(buf, 0, len(buf)):
        if num == _GRAPH_IN_MODEL and wt == 2:
            _graph(buf, a, b, cuts)
        elif num == _FUNCS_IN_MODEL and wt == 2:
            for fn, fw, x, y in _fields(buf, a, b):
                if fn == _FUNC_NODE and fw == 2:
                    _node(buf, x, y, cuts)
    return sorted(cuts)
