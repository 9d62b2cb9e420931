"""Reading and writing .onnxc archives (atomic writes, one-line errors); see :mod:`.pack`."""
from __future__ import annotations

import os
from pathlib import Path

from onnxcomp.errors import DataError, ModelLoadError
from onnxcomp.encode.pack import PackReport, pack_bytes, unpack_bytes

SUFFIX = ".onnxc"


def _write(path: Path, data: bytes, source: Path, force: bool) -> Path:
    from onnxcomp.io import atomic_file

    return atomic_file(path, data, source=source, force=force)


def _read(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise (ModelLoadError if what == "model" else DataError)(
            f"{what} file {path} does not exist", "check the path")
    return path.read_bytes()


def pack_file(model: str | os.PathLike, output: str | os.PathLike | None = None, *,
              force: bool = False) -> PackReport:
    """Pack a self-contained .onnx file into an archive beside it (or at ``output``)."""
    from onnxcomp import io

    src = Path(model)
    proto = io.load(src, load_external_data=False)  # one-line errors for missing / non-ONNX files
    if io.checks.external_tensors(proto):
        raise ModelLoadError(f"{src} keeps tensors in an external data file",
                             "pack works on self-contained .onnx files (below 2 GB): write it as one with "
                             "onnx.save(onnx.load(path), 'single.onnx') and pack that")
    data, report = pack_bytes(_read(src, "model"))
    out = Path(output) if output is not None else src.with_name(src.stem + SUFFIX)
    _write(out, data, src, force)
    report.path, report.source = str(out), str(src)
    return report


def unpack_file(archive: str | os.PathLike, output: str | os.PathLike | None = None, *,
                force: bool = False) -> Path:
    """Restore the original .onnx bytes from an archive; checksum verified before writing."""
    src = Path(archive)
    data = unpack_bytes(_read(src, "archive"), str(src))
    out = Path(output) if output is not None else src.with_name(src.stem + ".unpack.onnx")
    return _write(out, data, src, force)
