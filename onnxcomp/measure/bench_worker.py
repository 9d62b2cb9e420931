"""Child process of ``onnxcomp bench``: one model, one session, timed runs on request.

Protocol: JSON lines. The parent writes ``{"model", "feed", "threads", "provider"}`` and gets
``{"create_s", "rss_base", "rss_loaded"}`` (or ``{"error"}``) once the session exists; then
``{"cmd": "run", "n": N}`` -> ``{"times": [seconds, ...]}`` and ``{"cmd": "stop"}`` ->
``{"peak_rss", "rss_running"}``. ``rss_loaded``/``rss_running`` are steady resident memory (after
freed heap pages went back to the system) right after the session was made and after the runs. The
protocol uses a private copy of stdout; anything else printing to stdout goes to stderr.
Load mode (``{"loads": true, "feed", "threads", "provider"}`` first, for
:mod:`onnxcomp.measure.loadpeak`): ``{"ready"}``, then ``{"model"}`` -> ``{"peak_rss", "rss_base"}``.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def rss_bytes(field: str = "VmRSS") -> int | None:
    """Current (VmRSS) or peak (VmHWM) resident memory of this process, from /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    if field == "VmHWM":
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    return None


def trim() -> None:
    """Give freed heap pages back to the system (glibc), so RSS counts what the process holds."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def steady_rss() -> int | None:
    """Resident memory now, after freed heap pages went back to the system."""
    trim()
    return rss_bytes()


def reset_peak() -> bool:
    """Reset the peak-RSS mark to the current RSS (Linux >= 4.0), so the peak covers what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def serve(init: dict[str, Any], reply: Any, requests: Any) -> None:
    import numpy as np
    import onnxruntime as ort

    from onnxcomp.runtime import session_options, warm_up

    with np.load(init["feed"]) as z:
        feed = {k: z[k] for k in z.files}
    opts = session_options(init.get("threads"))
    warm_up(opts, init["provider"])
    trim()
    reset_peak()
    base = rss_bytes()
    t0 = time.perf_counter()
    sess = ort.InferenceSession(init["model"], opts, providers=[init["provider"]])
    create_s = time.perf_counter() - t0
    names = [o.name for o in sess.get_outputs()]
    reply({"create_s": create_s, "rss_base": base, "rss_loaded": steady_rss()})
    for line in requests:
        msg = json.loads(line)
        if msg.get("cmd") == "run":
            times = []
            for _ in range(int(msg["n"])):
                t = time.perf_counter()
                sess.run(names, feed)
                times.append(time.perf_counter() - t)
            reply({"times": times})
        elif msg.get("cmd") == "stop":
            reply({"peak_rss": rss_bytes("VmHWM"), "rss_running": steady_rss()})
            return


def serve_loads(init: dict[str, Any], reply: Any, requests: Any) -> None:
    """Load mode: for each ``{"model"}`` request, make a session (and run it once on the feed, when
    there is one), reply ``{"peak_rss", "rss_base"}`` and drop it (:mod:`onnxcomp.measure.loadpeak`
    sends one model per process: a later one reuses what an earlier one freed)."""
    import numpy as np
    import onnxruntime as ort

    from onnxcomp.runtime import session_options, warm_up

    feed = {}
    if init.get("feed"):
        with np.load(init["feed"]) as z:
            feed = {k: z[k] for k in z.files}
    opts = session_options(init.get("threads"))
    warm_up(opts, init["provider"])
    trim()
    reply({"ready": True})
    for line in requests:
        msg = json.loads(line)
        if "model" not in msg:
            return
        trim()
        reset_peak()
        base = rss_bytes()
        sess = ort.InferenceSession(msg["model"], opts, providers=[init["provider"]])
        if feed:
            sess.run(None, feed)
        reply({"peak_rss": rss_bytes("VmHWM"), "rss_base": base})
        del sess


def main() -> None:
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def reply(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    init = json.loads(sys.stdin.readline())
    try:
        (serve_loads if init.get("loads") else serve)(init, reply, sys.stdin)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises a one-line error
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        reply({"error": lines[0]})


if __name__ == "__main__":
    main()
