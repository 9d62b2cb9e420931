"""The .onnxc archive: an ONNX file split into streams, each entropy-coded; unpacks byte-identical.

Deep Compression's last stage is Huffman coding for downloads; lzma does that job here. The
ONNX bytes are walked at the protobuf wire level (never re-serialised, so any writer's byte
layout survives) and every tensor's ``raw_data`` is cut out into a stream by kind: float32,
float16/bfloat16, float64, indices (8/4-bit and 16-bit integers: codebook indices, gaps) and
other integers. What remains (graph, names, shapes) is the skeleton stream. Float streams are
byte-shuffled (byte planes) before coding. Format, version 1 (little-endian):

  magic      8 bytes  b"ONNXC\\x00\\r\\n"
  version    u16      1
  codec      u8       1 = lzma2 raw (preset 9e)
  reserved   u8       0
  sha256     32 bytes of the original ONNX file
  length     u64      size of the original ONNX file
  count      u16      number of streams
  streams    count x (kind u8, shuffle u8 = itemsize or 0, raw length u64, coded length u64)
  payloads   the coded streams, in table order
Stream 0 is the skeleton, stream 1 the cut list (u64 pairs: original offset, length, plus u8
stream id per cut, all little-endian), then the data streams.
"""
from __future__ import annotations

import hashlib
import lzma
import struct
from dataclasses import dataclass, field

import numpy as np

from onnxcomp.encode.protowalk import find_cuts
from onnxcomp.errors import DataError, OnnxCompError

MAGIC = b"ONNXC\x00\r\n"
VERSION = 1
CODEC_LZMA = 1
_HEAD = struct.Struct("<8sHBB32sQH")
_ENTRY = struct.Struct("<BBQQ")
KINDS = {0: "skeleton", 1: "cuts", 2: "float32", 3: "float16", 4: "float64", 5: "indices", 6: "integers"}
_SHUFFLE = {2: 4, 3: 2, 4: 8}
_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]



def entropy_bytes(data: bytes) -> float:
    """Order-0 Shannon entropy bound of a byte stream, in bytes."""
    if not data:
        return 0.0
    p = np.bincount(np.frombuffer(data, np.uint8), minlength=256) / len(data)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum() * len(data) / 8)


def _shuffle(data: bytes, item: int, inverse: bool = False) -> bytes:
    if item <= 1 or len(data) % item:
        return data
    a = np.frombuffer(data, np.uint8)
    return (a.reshape(item, -1).T if inverse else a.reshape(-1, item).T).tobytes()


@dataclass
class StreamInfo:
    """One stream of an archive: kind, raw and coded size, and its order-0 entropy bound."""

    kind: str
    raw_bytes: int
    coded_bytes: int
    entropy_bytes: float | None = None


@dataclass
class PackReport:
    """What ``pack`` wrote: sizes, per-stream figures (entropy bound beside the coded size)."""

    original_bytes: int
    archive_bytes: int
    streams: list[StreamInfo] = field(default_factory=list)
    path: str | None = None
    source: str | None = None

    @property
    def ratio(self) -> float:
        return self.archive_bytes / self.original_bytes if self.original_bytes else float("nan")

    def to_dict(self) -> dict:
        return {"source": self.source, "output": self.path, "original_bytes": self.original_bytes,
                "archive_bytes": self.archive_bytes, "ratio": self.ratio,
                "streams": [vars(s) for s in self.streams]}


def _compress(data: bytes, block: int = 1 << 20) -> bytes:
    """lzma (raw, preset 9e) fed in blocks: the same stream as one call, but Ctrl-C and SIGTERM
    are handled between blocks instead of after minutes on a big weight."""
    enc = lzma.LZMACompressor(format=lzma.FORMAT_RAW, filters=_FILTERS)
    view = memoryview(data)
    out = [enc.compress(view[i:i + block]) for i in range(0, len(view), block)]
    out.append(enc.flush())
    return b"".join(out)


def pack_bytes(onnx_bytes: bytes) -> tuple[bytes, PackReport]:
    """The archive for these ONNX bytes, and a report with the entropy bound per stream."""
    try:
        cuts = find_cuts(onnx_bytes)
    except ValueError:  # a layout the walk does not know: everything stays in the skeleton (lossless)
        cuts = []
    skeleton, pos = [], 0
    data: dict[int, list[bytes]] = {k: [] for k in range(2, 7)}
    for off, n, kind in cuts:
        skeleton.append(onnx_bytes[pos:off])
        data[kind].append(onnx_bytes[off:off + n])
        pos = off + n
    skeleton.append(onnx_bytes[pos:])
    table = np.array([(o, n) for o, n, _ in cuts], "<u8").reshape(-1, 2)
    kinds = np.array([k for _, _, k in cuts], np.uint8)
    streams = [(0, 0, b"".join(skeleton)), (1, 0, table.tobytes() + kinds.tobytes())]
    streams += [(k, _SHUFFLE.get(k, 0), b"".join(v)) for k, v in data.items() if v]
    head = [_HEAD.pack(MAGIC, VERSION, CODEC_LZMA, 0, hashlib.sha256(onnx_bytes).digest(), len(onnx_bytes),
                       len(streams))]
    payloads, report = [], PackReport(len(onnx_bytes), 0)
    for kind, item, raw in streams:
        coded = _compress(_shuffle(raw, item))
        head.append(_ENTRY.pack(kind, item, len(raw), len(coded)))
        payloads.append(coded)
        report.streams.append(StreamInfo(KINDS[kind], len(raw), len(coded),
                                         entropy_bytes(raw) if kind >= 2 else None))
    out = b"".join(head + payloads)
    report.archive_bytes = len(out)
    return out, report


def _corrupted(name: str, what: str) -> DataError:
    return DataError(f"{name} is corrupted ({what})", "copy or download the archive again")


def _check_table(name: str, length: int, entries: list[tuple[int, int, int, int]]) -> None:
    """The stream table must describe an archive pack could have written, and its declared sizes
    fit in memory, before anything is decoded (a small file declaring terabytes is refused)."""
    from onnxcomp.io.checks import check_allocation

    kinds = [e[0] for e in entries]
    if len(entries) < 2 or kinds[:2] != [0, 1] or len(set(kinds)) != len(kinds) or \
            any(k not in KINDS for k in kinds[2:]) or any(k < 2 for k in kinds[2:]):
        raise _corrupted(name, f"its stream table lists kinds {kinds}; pack writes the skeleton, the cut list "
                               "and one stream per data kind")
    if entries[1][2] % 17:
        raise _corrupted(name, "the cut list has a partial entry")
    from onnxcomp.io.tensors import PROTOBUF_LIMIT

    if length > PROTOBUF_LIMIT:  # pack takes self-contained .onnx files: one protobuf, below 2 GB
        raise _corrupted(name, f"it declares a {length / 1e9:.3g} GB model; a packed .onnx file is below 2 GB")
    restored = entries[0][2] + sum(e[2] for e in entries[2:])
    if restored != length:
        raise _corrupted(name, f"its streams hold {restored} bytes but it declares a {length}-byte model")
    try:
        check_allocation(2 * length + entries[1][2], f"{name}: the model it restores ({length} bytes)")
    except OnnxCompError as exc:
        raise DataError(exc.problem, "the archive declares an absurd size; check where it came from") from None


def _decode(name: str, kind: int, payload: bytes, n: int, block: int = 1 << 24) -> bytes:
    """One stream decoded in blocks, never beyond its declared ``n`` bytes (plus one to notice
    a stream that runs longer)."""
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_FILTERS)
    out, size, data = [], 0, payload
    try:
        while size <= n:
            part = dec.decompress(data, max_length=min(block, n + 1 - size))
            data = b""
            out.append(part)
            size += len(part)
            if dec.eof or (not part and dec.needs_input):
                break
    except lzma.LZMAError:
        raise _corrupted(name, f"stream {KINDS.get(kind, kind)} does not decode") from None
    if size != n:
        raise _corrupted(name, f"stream {KINDS.get(kind, kind)} has the wrong length")
    return b"".join(out)


def unpack_bytes(archive: bytes, name: str = "archive") -> bytes:
    """The original ONNX bytes; a one-line DataError for a foreign, truncated or corrupted file."""
    if archive[:8] != MAGIC:
        raise DataError(f"{name} is not an onnxcomp archive (bad magic)", "pass a file written by onnxcomp pack")
    if len(archive) < _HEAD.size:
        raise DataError(f"{name} is truncated ({len(archive)} bytes, shorter than the header)",
                        "copy or download the archive again")
    _, version, codec, _, digest, length, count = _HEAD.unpack_from(archive)
    if version != VERSION or codec != CODEC_LZMA:
        raise DataError(f"{name} is archive format version {version} (codec {codec}); this onnxcomp reads "
                        f"version {VERSION}", "unpack it with the onnxcomp version that packed it")
    pos = _HEAD.size + count * _ENTRY.size
    entries = [_ENTRY.unpack_from(archive, _HEAD.size + i * _ENTRY.size) for i in range(count)] \
        if pos <= len(archive) else []
    if not entries or pos + sum(e[3] for e in entries) != len(archive):
        raise DataError(f"{name} is truncated or has trailing bytes ({len(archive)} bytes)",
                        "copy or download the archive again")
    _check_table(name, length, entries)
    raw = []
    for kind, item, n, coded in entries:
        part = _decode(name, kind, archive[pos:pos + coded], n)
        raw.append((kind, _shuffle(part, item, inverse=True)))
        pos += coded
    out = _reassemble(raw)
    if len(out) != length or hashlib.sha256(out).digest() != digest:
        raise DataError(f"{name} is corrupted (sha256 of the restored model does not match)",
                        "copy or download the archive again")
    return out


def _reassemble(raw: list[tuple[int, bytes]]) -> bytes:
    skeleton, cuts = raw[0][1], raw[1][1]
    m = len(cuts) // 17
    table = np.frombuffer(cuts[:16 * m], "<u8").reshape(-1, 2)
    kinds = np.frombuffer(cuts[16 * m:], np.uint8)
    streams = {kind: memoryview(data) for kind, data in raw[2:]}
    cursor = {k: 0 for k in streams}
    parts, pos, skel = [], 0, 0
    for (off, n), kind in zip(table.tolist(), kinds.tolist()):
        take = off - pos
        parts.append(skeleton[skel:skel + take])
        skel += take
        c = cursor.get(kind, 0)
        parts.append(bytes(streams[kind][c:c + n]) if kind in streams else b"")
        cursor[kind] = c + n
        pos = off + n
    parts.append(skeleton[skel:])
    return b"".join(parts)
