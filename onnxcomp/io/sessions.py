"""onnxruntime sessions from a Model, a proto or a file, and batch streaming through them."""
from __future__ import annotations

import contextlib
import contextvars
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import onnx

from onnxcomp.errors import ConfigError, ModelLoadError
from onnxcomp.io.model import Model
from onnxcomp.io.temp import temp_prefix
from onnxcomp.io.tensors import session_source, tensor_bytes
from onnxcomp.io.writer import write_model
from onnxcomp.runtime import session_options

DEFAULT_PROVIDER = "CPUExecutionProvider"
# onnxruntime 1.32 dies (SIGSEGV) making a session at the default optimization level for a float16
# Transpose(perm=[1, 0, 2]) -> MatMul by an initializer, a pattern the calibration walks cut out of
# float16 transformers (nn.MultiheadAttention's input transpose); float32 is unaffected. The fusion
# only folds the Transpose into the MatMul, so the sessions onnxcomp measures with go without it.
UNSAFE_FUSIONS = ["MatmulTransposeFusion"]


def available_providers() -> list[str]:
    import onnxruntime as ort
    return list(ort.get_available_providers())


def resolve_provider(name: str | None) -> str:
    """``cpu``, ``CPU`` or ``CPUExecutionProvider`` -> the provider's full name; ConfigError if absent."""
    name = name or DEFAULT_PROVIDER
    available = available_providers()
    for p in available:
        if name.lower() in (p.lower(), p.lower().removesuffix("executionprovider")):
            return p
    raise ConfigError(f"provider {name!r} is not available in this onnxruntime build",
                      f"choose one of: {', '.join(available)}")


@dataclass
class Written:
    """A model just written to ``path``: ``proto`` (what was written) answers questions about the
    graph, sessions read the file (onnxruntime maps external data; no second copy in memory)."""

    proto: onnx.ModelProto
    path: Path

    @property
    def graph(self) -> onnx.GraphProto:
        return self.proto.graph


def _as_proto_or_path(model: Any) -> onnx.ModelProto | Path:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, Written):
        return model.path
    if isinstance(model, Model):
        return model.proto
    path = Path(model)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist", "check the path")
    return path


# Above this many tensor bytes sessions skip graph optimizations: onnxruntime's constant folding of
# in-graph decoders (sparse, codebook) peaks at ~8x the weights they decode (2.77 GB for 327 MB),
# while running the decoders per batch peaks at ~1.3x. Slower per batch, but no out-of-memory.
LOW_MEMORY_BYTES = 512_000_000
FOLD_MIN_RUNS = 2
_SIZE_HINT: contextvars.ContextVar[int] = contextvars.ContextVar("onnxcomp_size_hint", default=0)


def _tensor_bytes(src: onnx.ModelProto | Path) -> int:
    if isinstance(src, Path):
        data = src.with_name(src.name + ".data")
        return src.stat().st_size + (data.stat().st_size if data.is_file() else 0)
    return tensor_bytes(src)


@contextlib.contextmanager
def low_memory_sessions(*models: onnx.ModelProto, runs: int | None = None):
    """Sessions made inside size themselves on the largest of ``models``.

    A compressed model's encoded tensors are small, but its decoders unfold to the original's
    size: comparing it with a big original, both sessions skip constant folding alike. So do
    sessions that will run only ``runs`` <= FOLD_MIN_RUNS batches: folding a decoder costs more
    than running it that often (a data-free check of a 90 MB transformer: load peak 4.4x the
    model's bytes and 0.5 s with folding, 1.7x and 0.02 s without).
    """
    token = _SIZE_HINT.set(LOW_MEMORY_BYTES + 1 if runs is not None and runs <= FOLD_MIN_RUNS
                           else max((_tensor_bytes(m) for m in models), default=0))
    try:
        yield
    finally:
        _SIZE_HINT.reset(token)


def session(model: Any, *, threads: int | None = None, provider: str = DEFAULT_PROVIDER) -> Any:
    """An onnxruntime InferenceSession for a ModelProto, an onnxcomp Model or a file path.

    To read intermediate tensors, expose them first (:func:`onnxcomp.graph.subgraph.expose`, as
    :class:`onnxcomp.measure.capture.Capturer` does). The caller's model is never modified. Lazy tensors
    (:func:`onnxcomp.io.load` with ``lazy=True``) are read by onnxruntime from their own files;
    protos with more than ~1.8 GB of tensors in memory (protobuf's limit is 2 GB) go through a
    temp file with external data.
    """
    import onnxruntime as ort

    provider = resolve_provider(provider)
    src = _as_proto_or_path(model)
    opts = session_options(threads)
    if max(_tensor_bytes(src), _SIZE_HINT.get()) > LOW_MEMORY_BYTES:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.enable_cpu_mem_arena = False  # each decoder's unfolded tensors freed once used, not
        opts.enable_mem_pattern = False  # kept in an arena sized for all of them at once
    tmp = None
    kw = {"providers": [provider], "disabled_optimizers": UNSAFE_FUSIONS}
    try:
        if isinstance(src, Path):
            sess = ort.InferenceSession(str(src), opts, **kw)
        elif (direct := session_source(src)) is None:
            tmp = tempfile.TemporaryDirectory(prefix=temp_prefix("onnxcomp-session"))
            path = Path(tmp.name) / "model.onnx"
            write_model(src, path, external=True, data_name="model.onnx.data")
            sess = ort.InferenceSession(str(path), opts, **kw)
        else:
            blob, folder = direct
            if folder is not None:  # lazy tensors: onnxruntime maps them from their files
                opts.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
            sess = ort.InferenceSession(blob, opts, **kw)
            del blob
    except (ConfigError, ModelLoadError):
        raise
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        name = str(src) if isinstance(src, Path) else "the model"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"onnxruntime cannot load {name}: {first}",
                             "check the model with `onnxcomp inspect` or re-export it") from None
    if tmp is not None:
        sess._onnxcomp_tmp = tmp  # keep the external data alive as long as the session
    return sess


def feed(sess: Any, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The part of a batch the session takes as inputs."""
    return {i.name: batch[i.name] for i in sess.get_inputs() if i.name in batch}


def run_batches(sess: Any, data: Iterable[dict[str, np.ndarray]],
                output_names: Sequence[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Run every batch; yield ``{output_name: array}`` per batch."""
    names = list(output_names) if output_names else [o.name for o in sess.get_outputs()]
    for batch in data:
        yield dict(zip(names, sess.run(names, feed(sess, batch))))
