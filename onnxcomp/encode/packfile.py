"""Reading and writing .onnxc archives (atomic writes, one-line errors); see :mod:`.pack`."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import DataError, ModelLoadError, ModelSaveError
from .pack import PackReport, pack_bytes, unpack_bytes

SUFFIX = ".onnxc"


def _write(path: Path, data: bytes, source: Path, force: bool) -> Path:
    if path.exists() and source.exists() and os.path.samefile(path, source) and not force:
        raise ModelSaveError(f"output {path} is the input file",
                             "choose another -o path (or pass --force to overwrite the input)")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelSaveError(f"output folder {folder} does not exist", "create it or choose another -o")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ModelSaveError(f"cannot write {path}: {exc.strerror or exc}",
                             "check the folder's permissions and free space") from None
    return path


def _read(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise (ModelLoadError if what == "model" else DataError)(
            f"{what} file {path} does not exist", "check the path")
    return path.read_bytes()


def pack_file(model: str | os.PathLike, output: str | os.PathLike | None = None, *,
              force: bool = False) -> PackReport:
    """Pack a self-contained .onnx file into an archive beside it (or at ``output``)."""
    from .. import io

    src = Path(model)
    proto = io.load(src, load_external_data=False)  # one-line errors for missing / non-ONNX files
    if io._external_tensors(proto):
        raise ModelLoadError(f"{src} keeps tensors in an external data file",
                             "pack works on self-contained .onnx files (below 2 GB)")
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
