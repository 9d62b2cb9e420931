"""Regressions for hostile archives, interrupts at any moment and leftovers of killed runs (issue 22)."""
from __future__ import annotations

import hashlib
import lzma
import os
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxcomp.cli import main

from . import models as M

ROOT = Path(__file__).resolve().parent.parent
CLI = "import sys; from onnxcomp.cli import main; sys.exit(main(sys.argv[1:]))"


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err + cap.out
    return code, cap.out, cap.err


# --- .onnxc archives: declared sizes, stream tables, protobuf groups ------------------------------------

def archive(entries: list[tuple[int, int, bytes]], length: int, digest: bytes = b"\0" * 32) -> bytes:
    """An archive with the given (kind, raw length, payload) streams, as pack lays them out."""
    from onnxcomp.encode import pack as P

    head = P._HEAD.pack(P.MAGIC, P.VERSION, P.CODEC_LZMA, 0, digest, length, len(entries))
    table = b"".join(P._ENTRY.pack(kind, 0, n, len(payload)) for kind, n, payload in entries)
    return head + table + b"".join(payload for _, _, payload in entries)


def coded(data: bytes) -> bytes:
    """An lzma2 raw stream pack's decoder reads (preset 1: fast; the decoder's 64 MB dictionary
    holds any smaller one)."""
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 1}])


def unpack_cli(capsys, tmp_path, data: bytes) -> tuple[int, str]:
    src = tmp_path / "a.onnxc"
    src.write_bytes(data)
    code, _, err = run(capsys, ["unpack", str(src), "-o", str(tmp_path / "out.onnx")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnxc"]  # nothing written
    return code, err


def test_unpack_single_stream_archive(capsys, tmp_path):
    """An archive with only the skeleton stream crashed with an IndexError."""
    code, err = unpack_cli(capsys, tmp_path, archive([(0, 5, coded(b"hello"))], 5))
    assert code == 2 and err.count("\n") == 1 and "stream table" in err


def test_unpack_refuses_absurd_declared_sizes_before_decoding(capsys, tmp_path, monkeypatch):
    big = 10**12
    code, err = unpack_cli(capsys, tmp_path, archive([(0, big, coded(b"x")), (1, 0, coded(b""))], big))
    assert code == 2 and "below 2 GB" in err
    from onnxcomp.io import checks

    monkeypatch.setattr(checks, "available_memory", lambda: 1000)
    n = 10**6
    code, err = unpack_cli(capsys, tmp_path, archive([(0, n, coded(b"x")), (1, 0, coded(b""))], n))
    assert code == 2 and err.count("\n") == 1 and "absurd size" in err


def test_unpack_decodes_no_more_than_declared(tmp_path):
    """A 200 MB-when-decoded stream declaring 1000 bytes: decoding stops at the cap (it once ran
    without a limit: 6 GB of RAM in 30 s for a 469 KB archive). The peak is the decoder's 64 MB
    dictionary, whatever the stream would decode to."""
    from onnxcomp.encode.pack import unpack_bytes
    from onnxcomp.errors import DataError

    bomb = coded(bytes(200 << 20))
    data = archive([(0, 1000, bomb), (1, 0, coded(b""))], 1000)
    assert len(data) < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="wrong length"):
            unpack_bytes(data, "a.onnxc")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 << 20


def test_pack_model_with_group_encoded_unknown_field(capsys, tmp_path):
    """A valid model holding an unknown field in the (deprecated) group encoding crashed pack."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    group = varint(1000 << 3 | 3) + varint(1 << 3 | 0) + varint(42) + varint(1000 << 3 | 4)
    src = tmp_path / "m.onnx"
    src.write_bytes(M.conv_bn_relu(c_mid=8).SerializeToString() + group)
    onnx.checker.check_model(onnx.load(str(src)))
    assert run(capsys, ["pack", str(src), "-o", str(tmp_path / "m.onnxc")])[0] == 0
    assert run(capsys, ["unpack", str(tmp_path / "m.onnxc"), "-o", str(tmp_path / "back.onnx")])[0] == 0
    assert (tmp_path / "back.onnx").read_bytes() == src.read_bytes()


def test_pack_compresses_in_blocks_to_the_same_stream():
    """Fed in blocks (so interrupts are handled between them), lzma writes the one-call stream."""
    from onnxcomp.encode.pack import _FILTERS, _compress

    data = (np.random.default_rng(0).standard_normal(600_000) * 0.01).astype(np.float16).tobytes()
    assert _compress(data, block=1 << 16) == lzma.compress(data, format=lzma.FORMAT_RAW, filters=_FILTERS)
