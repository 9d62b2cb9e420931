"""Test-run settings: the suite runs in one worker process per core (pytest-xdist, ``-n auto`` in
pyproject.toml), each worker single-threaded so the workers do not fight over the cores.

Two workers each running onnxruntime and BLAS with a thread per core made every test ~2x slower
(onnxruntime's threads spin while they wait), which ate the whole gain of running two at a time.
``-n 0`` runs the suite in this process with the libraries' default threads.
"""
from __future__ import annotations

import os
import signal

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

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    # A suite started in the background by a non-interactive shell (``cmd &``, some CI runners)
    # inherits SIGINT ignored, and so would every command the interrupt tests start: those tests
    # are about a terminal's Ctrl-C, so they get one.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _cpu_quota() -> int | None:
    """Whole cores a container's CPU quota allows (cgroup v2, then v1), or None without a quota:
    a container can see all of a host's cores and be allowed two of them."""
    for path, split in (("/sys/fs/cgroup/cpu.max", None), ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "cpu.cfs_period_us")):
        try:
            with open(path) as f:
                fields = f.read().split()
            if split is not None:
                with open(os.path.join(os.path.dirname(path), split)) as f:
                    fields += f.read().split()
            quota, period = fields[0], fields[1]
            if quota in ("max", "-1"):
                return None
            return max(1, int(quota) // int(period))
        except (OSError, ValueError, IndexError):
            continue
    return None


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per core this process may run on (within a container's CPU quota),
    at most MAX_WORKERS."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, _cpu_quota() or cores, MAX_WORKERS))
