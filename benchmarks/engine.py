"""What a calibrated command costs, as a multiple of ``onnxcomp compare M M --data`` on the same
machine in the same run, old code beside new, with the quality each writes.

    python benchmarks/engine.py --corpus /tmp/corpus-cache [--old COMMIT] [--models KEY ...]

For each model (resnet_digits from models/; effnet_lite0 and ocr_det_ppocrv4 from a built
corpus cache, ../shared/corpus) it times, as child processes, ``compare M M --data calib.npz``
and ``cluster --bits 4``, ``prune --sparsity 0.5`` and ``prune --structured --ratio 0.3`` (each
with ``--data calib.npz``), records wall time and peak RSS, and scores every written model with
the model's evaluator. ``--old COMMIT`` also runs the same commands with onnxcomp at that commit
(installed into a temporary venv from a git worktree), interleaved with the new ones. Prints a
table and writes benchmarks/results/engine.json. The new code's model passes per command are in
the JSON too (segments and batch runs of the streaming engine, from ``--json``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODELS, ROOT, install_old, real_models, table, write_json  # noqa: E402

COMMANDS = {
    "cluster4": ["cluster", "{m}", "--bits", "4"],
    "prune50": ["prune", "{m}", "--sparsity", "0.5"],
    "structured30": ["prune", "--structured", "{m}", "--ratio", "0.3"],
}


def timed(argv: list[str]) -> dict:
    """Wall seconds, peak RSS (bytes) and exit code of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    out = proc.stdout.read().decode()
    err = proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": time.perf_counter() - t0, "peak_rss": usage.ru_maxrss * 1024, "code": proc.returncode,
            "stdout": out, "stderr": err[-400:]}


def engine_counts(stdout: str) -> dict | None:
    """The streaming engine's segments / batch runs from a command's --json output (new code only)."""
    try:
        report = json.loads(stdout)
    except ValueError:
        return None
    counts = []
    for p in report.get("passes", []):  # each pass records a list of walks
        walks = p.get("settings", {}).get("engine") or []
        counts += walks if isinstance(walks, list) else [walks]
    return counts or None


def run_model(m, tools: dict[str, Path], tmp: Path, repeat: int) -> list[dict]:
    rows = []
    for name, tool in tools.items():
        base = min((timed([str(tool), "compare", str(m.path), str(m.path), "--data", str(m.calib)])
                    for _ in range(repeat)), key=lambda r: r["seconds"])
        for cmd, argv in COMMANDS.items():
            out = tmp / f"{m.key}.{name}.{cmd}.onnx"
            full = [str(tool)] + [a.format(m=m.path) for a in argv] + ["--data", str(m.calib), "-o", str(out),
                                                                        "--force", "--json"]
            r = timed(full)
            row = {"model": m.key, "code": name, "command": cmd, "seconds": r["seconds"], "peak_rss": r["peak_rss"],
                   "compare_seconds": base["seconds"], "compare_rss": base["peak_rss"],
                   "time_ratio": r["seconds"] / base["seconds"], "rss_ratio": r["peak_rss"] / base["peak_rss"],
                   "exit": r["code"], "engine": engine_counts(r["stdout"]) if name == "new" else None}
            if r["code"] in (0, 3) and out.exists():
                import onnx

                q, everything = m.measure(onnx.load(str(out)))
                row.update(quality=q, metric=m.metric, metrics=everything)
            else:
                row["error"] = r["stderr"]
            rows.append(row)
            print(f"{m.key} {name} {cmd}: {row['seconds']:.1f} s, {row['time_ratio']:.1f}x compare, "
                  f"peak RSS {row['rss_ratio']:.2f}x, {row.get('quality')}", file=sys.stderr)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=None, help="A built corpus cache (../shared/corpus/setup.sh).")
    ap.add_argument("--old", default=None, metavar="COMMIT", help="Also run onnxcomp at this commit.")
    ap.add_argument("--models", nargs="*", default=["resnet_digits", "effnet_lite0", "ocr_det_ppocrv4"])
    ap.add_argument("--repeat", type=int, default=2, help="compare runs per model (the fastest is the base).")
    args = ap.parse_args()
    models = real_models(args.corpus, args.models)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        tools = {"new": Path(sys.executable).with_name("onnxcomp")}
        if args.old:
            tools = {"old": install_old(args.old, tmp), **tools}
        rows = [r for m in models for r in run_model(m, tools, tmp, args.repeat)]
        if args.old:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "old-tree")],
                           capture_output=True)
    write_json("engine", {"rows": rows, "old": args.old, "models_dir": str(MODELS.relative_to(ROOT))})
    show = [[r["model"], r["command"], r["code"], f"{r['seconds']:.1f}", f"{r['time_ratio']:.1f}x",
             f"{r['rss_ratio']:.2f}x", "-" if r.get("quality") is None else f"{r['metric']} {r['quality']:.4f}",
             "-" if not r.get("engine") else f"{len(r['engine'])} / {sum(e['batch_runs'] for e in r['engine'])}"]
            for r in rows]
    print(table(["model", "command", "code", "seconds", "time / compare", "peak RSS / compare", "quality",
                 "engine walks / batch runs"], show))


if __name__ == "__main__":
    main()
