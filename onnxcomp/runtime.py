"""onnxruntime, quiet, without onnx: the module and session options for every layer, and a warm-up.

Importing onnx costs ~0.6 s; the child processes that measure a model's load and run time
(:mod:`onnxcomp.measure.bench_worker`) need none of it, so they start in ~0.15 s.
"""
from __future__ import annotations

from typing import Any

from onnxcomp.errors import ConfigError

# A one-node model (x -> Relu -> y, float [1], IR 8, opset 13), serialized: what
# ``onnx.helper.make_model(make_graph([make_node("Relu", ["x"], ["y"])], "warm_up", ...))`` writes.
WARM_UP_MODEL = bytes.fromhex(
    "08083a390a0c0a0178120179220452656c7512077761726d5f75705a0f0a0178120a0a08080112040a020801620f0a0179120a0a0808"
    "0112040a02080142040a00100d")


def quiet_ort() -> Any:
    """The onnxruntime module with its global logger silenced (failures surface as exceptions)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    return ort


def session_options(threads: int | None = None) -> Any:
    """Quiet session options; ``threads`` pins intra-op threads (inter-op runs sequentially)."""
    ort = quiet_ort()

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # failures surface as exceptions, reported on one line
    if threads is not None:
        if int(threads) < 1:
            raise ConfigError(f"threads={threads} is not positive", "pass --threads 1 or more")
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return opts


def warm_up(opts: Any, provider: str) -> None:
    """Make and run a one-node session, so what onnxruntime sets up once per process (allocators,
    kernel registries, thread pools, library pages: ~9 MB) is done before what is measured."""
    import numpy as np

    ort = quiet_ort()
    ort.InferenceSession(WARM_UP_MODEL, opts, providers=[provider]).run(None, {"x": np.zeros(1, np.float32)})
