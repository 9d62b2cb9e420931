"""The one atomic writer: models (with external data above 2 GB) and any other output file.

Everything onnxcomp writes goes to a temporary file in the target folder, is verified, and only
then renamed into place; the input is never overwritten without ``force``; a failure or an
interrupt leaves nothing behind.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx

from onnxcomp.errors import ModelLoadError, ModelSaveError
from onnxcomp.io.ort import compatible_ir, ort_load_error, verify_file
from onnxcomp.io.checks import external_tensors
from onnxcomp.io.tensors import (_external_info, _fill, _header, _lost, _set_location,
                                 EMBEDDED, inline_copy, is_lazy, lazy_tensors, needs_external_data, stored_size)
from onnxcomp.io.temp import sweep_once, temp_folder, temp_prefix



def _goes_apart(tensor: onnx.TensorProto, threshold: int) -> bool:
    """Whether a tensor goes to the external data file (as onnx.save_model's size_threshold)."""
    if is_lazy(tensor):
        return _external_info(tensor)[2] >= threshold
    return tensor.HasField("raw_data") and stored_size(tensor) >= threshold


def write_model(model: onnx.ModelProto, path: Path, *, external: bool, data_name: str | None = None,
                threshold: int = 1024) -> dict[str, tuple[int, int]]:
    """Write ``model`` to ``path`` without modifying it; with ``external``, initializers of
    ``threshold`` bytes or more go, one at a time, to ``data_name`` beside it (lazy ones are copied
    from their files in blocks: memory stays at one tensor). Returns {name: (offset, length)} of
    the initializers in the data file."""
    if not external:
        onnx.save_model(inline_copy(model), str(path))
        return {}
    data_name = data_name or path.name + ".data"
    placed = {}
    header, pairs = _header(model, lambda t: is_lazy(t) or _goes_apart(t, threshold))
    with open(path.parent / data_name, "wb") as f:
        for shell, src in pairs:
            if not _goes_apart(src, threshold):  # a small lazy tensor: inline, as if it had been read
                _fill(shell, src)
                continue
            offset = f.tell()
            if is_lazy(src):
                location, start, length = _external_info(src)
                _copy_range(location, start, length, f, src.name)
            else:
                length = f.write(src.raw_data)
            _point(shell, data_name, offset, length)
            placed[src.name] = (offset, length)
    onnx.save_model(header, str(path))
    return placed


def _point(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)


def _reading(model: onnx.ModelProto, file: Path) -> list[onnx.TensorProto]:
    """The model's lazy tensors whose data is in ``file``."""
    return [t for t in lazy_tensors(model) if _same_file(Path(_external_info(t)[0]), file)]


def shelter(models, files) -> Path | None:
    """Before ``files`` are replaced, keep what they hold readable for the lazy tensors of
    ``models``: each file such tensors read is hard-linked (or copied) into a hidden folder beside
    it and they point there. Returns that folder (remove it when done), None when nothing reads them."""
    hidden = None
    for file in map(Path, files):
        readers = [t for m in models for t in _reading(m, file)]
        if not readers:
            continue
        hidden = hidden or Path(tempfile.mkdtemp(prefix=temp_prefix(".onnxcomp-input"), dir=file.parent))
        keep = hidden / file.name
        if not keep.exists():
            try:
                os.link(file, keep)
            except OSError:  # no hard links here: a copy
                shutil.copyfile(file, keep)
        for t in readers:
            location, offset, _ = _external_info(t)
            if (location, offset) in EMBEDDED:  # still a tensor left inside a model file
                EMBEDDED.add((str(keep.resolve()), offset))
            _set_location(t, str(keep.resolve()))
    return hidden


def _copy_range(location: str, start: int, length: int, out, name: str, block: int = 64 << 20) -> None:
    try:
        with open(location, "rb") as src:
            src.seek(start)
            left = length
            while left > 0:
                chunk = src.read(min(block, left))
                if not chunk:
                    raise _lost(name, location)
                out.write(chunk)
                left -= len(chunk)
    except OSError as exc:
        raise _lost(name, location, exc) from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _own_data(path: Path, data_file: Path) -> Path | None:
    """``data_file`` when the file at ``path`` (about to be replaced by a model with its tensors
    inline) keeps its tensors there and nowhere else: overwriting the input with ``--force``
    must not leave its old ``.data`` behind. A .data file of another name may be shared; kept."""
    if not (path.is_file() and data_file.is_file()):
        return None
    try:
        from onnx.external_data_helper import ExternalDataInfo

        header = onnx.load(str(path), load_external_data=False)
        places = {ExternalDataInfo(t).location for t in external_tensors(header)}
    except Exception:  # noqa: BLE001 - not a model we can read: leave its neighbours alone
        return None
    return data_file if places == {data_file.name} else None


def _refuse_input_data(data_file: Path, input_path: Path) -> None:
    """The output's ``.data`` file may not be the input model or one of its external data files."""
    if not data_file.exists():
        return
    inputs = [input_path]
    try:
        header = onnx.load(str(input_path), load_external_data=False)
        from onnx.external_data_helper import ExternalDataInfo

        inputs += [input_path.parent / ExternalDataInfo(t).location for t in external_tensors(header)]
    except Exception:  # noqa: BLE001 - the input was loaded before; be conservative
        pass
    if any(_same_file(data_file, p) for p in inputs):
        raise ModelSaveError(f"the output's external data file {data_file} is the input's external data",
                             "choose another -o name (the input would be overwritten)")


def save(model: onnx.ModelProto, path: str | os.PathLike, *, input_path: str | os.PathLike | None = None,
         verify: bool = True, force: bool = False) -> Path:
    """Write the model atomically to ``path`` and return the path.

    The model goes to a temporary file in the target folder; when ``verify`` is set it must pass
    ``onnx.checker`` and load in onnxruntime before it is renamed into place. Models above 2 GB
    get their tensors in ``<name>.data`` beside the file, written one tensor at a time (lazy
    tensors are copied from their files); ``model`` keeps its tensors. ``path`` may not be
    ``input_path`` unless ``force`` is set.
    """
    path = Path(path)
    folder = check_output(path, input_path, force, "model")
    compatible_ir(model)
    external = needs_external_data(model)
    if external and input_path is not None and not force:
        _refuse_input_data(folder / (path.name + ".data"), Path(input_path))
    sweep_once(folder)
    try:
        with temp_folder(temp_prefix(f".{path.name}"), folder) as tmp_dir:
            tmp = tmp_dir / path.name
            data_name = path.name + ".data"
            placed = write_model(model, tmp, external=external, data_name=data_name)  # ``model`` as it was
            stale = _reading(model, folder / data_name) if external else []  # in the file to be replaced
            if verify:
                try:
                    verify_file(tmp)
                except Exception:  # noqa: BLE001 - blame the input when onnxruntime cannot load it either
                    problem = ort_load_error(Path(input_path)) if input_path is not None else None
                    if problem is not None:
                        raise ModelLoadError(f"onnxruntime cannot load {input_path}: {problem}",
                                             "re-export the model; onnxcomp writes only models onnxruntime "
                                             "loads") from None
                    raise
            for t in stale:  # small ones were written inline: read them in now, while the file is there
                if t.name not in placed:
                    _fill(t, t)
            if external:
                os.replace(tmp_dir / data_name, folder / data_name)
                for t in stale:  # the same bytes, at their place in the new file
                    if t.name in placed:
                        _point(t, str((folder / data_name).resolve()), *placed[t.name])
                try:
                    os.replace(tmp, path)
                except BaseException:  # never a .data file without its model
                    (folder / data_name).unlink(missing_ok=True)
                    raise
            else:
                orphan = _own_data(path, folder / data_name)
                os.replace(tmp, path)
                if orphan is not None:  # the replaced file's .data: nothing refers to it any more
                    for t in _reading(model, orphan):
                        _fill(t, t)
                    orphan.unlink(missing_ok=True)
    except OSError as exc:
        raise ModelSaveError(f"cannot write {path}: {exc.strerror or exc}",
                             "check the folder's permissions and free space") from None
    return path


def discard(path: Path, keep: Path | None = None) -> None:
    """Remove a written output (and its .data) after the command failed; never the file ``keep``."""
    if keep is not None and _same_file(path, Path(keep)):
        return
    for p in (path, path.with_name(path.name + ".data")):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def default_output(input_path: str | os.PathLike, command: str, suffix: str = ".onnx") -> Path:
    """``<stem>.<command>.onnx`` beside the input."""
    p = Path(input_path)
    return p.with_name(f"{p.stem}.{command}{suffix}")


def atomic_file(path: str | os.PathLike, data: bytes, *, source: str | os.PathLike | None = None,
                force: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, then rename), with the
    permissions a plain open() would give; never onto ``source`` unless ``force``."""
    path = Path(path)
    check_output(path, source, force)
    folder = path.parent if str(path.parent) else Path(".")
    sweep_once(folder)
    try:
        with temp_folder(temp_prefix(f".{path.name}"), folder) as tmp_dir:
            tmp = tmp_dir / path.name
            tmp.write_bytes(data)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
    except OSError as exc:
        raise ModelSaveError(f"cannot write {path}: {exc.strerror or exc}",
                             "check the folder's permissions and free space") from None
    return path


def check_output(path: Path, source: str | os.PathLike | None, force: bool, what: str = "file") -> Path:
    """The checks every output passes before any work is written: not the input (unless
    ``force``), an existing folder, not a folder itself. Returns the folder."""
    if source is not None and not force and (
            path.resolve() == Path(source).resolve() or _same_file(path, Path(source))):
        raise ModelSaveError(f"output {path} is the input {what}",
                             "choose another -o path (or pass --force to overwrite the input)")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelSaveError(f"output folder {folder} does not exist", "create it or choose another -o")
    if path.is_dir():
        raise ModelSaveError(f"output {path} is a folder", "give a file name")
    return folder
