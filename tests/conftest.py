"""Test-run settings: the suite runs in one worker process per core (pytest-xdist, ``-n auto`` in
pyproject.toml), each worker single-threaded so the workers do not fight over the cores.

Two workers each running onnxruntime and BLAS with a thread per core made every test ~2x slower
(onnxruntime's threads spin while they wait), which ate the whole gain of running two at a time.
``-n 0`` runs the suite in this process with the libraries' default threads.
"""
from __future__ import annotations

import os

WORKER = os.environ.get("PYTEST_XDIST_WORKER")
MAX_WORKERS = 4  # each worker holds its own models and sessions; more adds memory, not much speed

if WORKER:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)  # numpy may already have started its BLAS with a thread per core

    import onnxcomp.io.sessions as _sessions
    import onnxcomp.runtime as _runtime

    _default_options = _runtime.session_options

    def _one_thread(threads: int | None = None):
        """onnxruntime's session options with one intra-op thread unless a test asks for more."""
        return _default_options(1 if threads is None else threads)

    _runtime.session_options = _one_thread
    _sessions.session_options = _one_thread


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per core this process may run on, at most MAX_WORKERS."""
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
                      MAX_WORKERS))
