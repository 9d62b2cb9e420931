"""Compressed at run time: ``onnxcomp quantize`` beside onnxruntime.quantization on the same data,
in one run, every model benchmarked side by side on 1 thread.

    python benchmarks/runtime.py --corpus /tmp/corpus-cache [--models KEY ...] [--runs N] [--old COMMIT]

Rows per model (the issue's targets in brackets):
- vit_digits (models/): fp32; ``onnxcomp quantize --weights int4 --activations int8`` (MatMulNBits);
  onnxruntime's MatMulNBitsQuantizer RTN and GPTQ at the same bits and block, calibrated on the
  same data [within 0.5 points, steady RSS <= 0.4x, latency <= 1.1x];
- effnet_lite0: fp32; ``onnxcomp quantize`` (QDQ int8); onnxruntime's ``quantize_static`` (QDQ,
  per-channel int8 weights, uint8 activations) on the same calib.npz [top-1 agreement >= 0.95,
  latency <= 0.6x];
- ocr_det_ppocrv4: the same two int8 rows [loads, line F1 within 0.01];
- resnet_digits: ``onnxcomp prune --structured --ratio 0.5`` then ``onnxcomp quantize`` [>= 4x faster
  at <= 1 point].
Quality comes from each model's evaluator (digits test accuracy; the corpus evaluator); latency
(p50), file size and steady resident memory (after the session is made and after the runs,
onnxruntime already set up in the process) from ``onnxcomp bench``, all of a model's rows in one
interleaved run; ``--old COMMIT`` adds each onnxcomp row as built by onnxcomp at that commit, in the
same interleaved run. onnxruntime's weight-only quantizer needs the ``onnx_ir`` package. Prints a table
and writes benchmarks/results/runtime.json.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODELS, install_old, real_models, table, write_json  # noqa: E402

ONNXCOMP = Path(sys.executable).with_name("onnxcomp")
OLD: list = []  # (label, onnxcomp script) of the --old commit
VIT = ["--weights", "int4", "--activations", "int8", "--block", "128"]
TARGETS = {"vit_digits": "within 0.005 of fp32; loaded and running RSS <= 0.4x; p50 <= 1.1x",
           "effnet_lite0": "top1_agree >= 0.95; p50 <= 0.6x",
           "ocr_det_ppocrv4": "loads; f1 within 0.01 of fp32",
           "resnet_digits": "p50 <= 0.25x at <= 0.01 below fp32"}


class Reader:
    """onnxruntime CalibrationDataReader over the first input of a calib.npz, one sample per batch."""

    def __init__(self, calib: Path, name: str, limit: int | None = None) -> None:
        x = np.load(calib)
        arr = x[x.files[0]] if name not in x.files else x[name]
        self.items = [{name: arr[i:i + 1]} for i in range(len(arr) if limit is None else min(limit, len(arr)))]
        self.it = iter(self.items)

    def get_next(self):
        return next(self.it, None)

    def rewind(self) -> None:
        self.it = iter(self.items)

    def __iter__(self):  # onnxruntime's GPTQ iterates the reader
        self.rewind()
        return iter(self.items)


def onnxcomp(argv: list[str], exe: Path = ONNXCOMP) -> None:
    proc = subprocess.run([str(exe), *argv, "--force"], capture_output=True, text=True)
    if proc.returncode not in (0, 3):
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")


def ort_static(src: Path, calib: Path, out: Path) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    quantize_static(str(src), str(out), Reader(calib, name), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)


def ort_nbits(src: Path, calib: Path, out: Path, algo: str) -> None:
    from onnxruntime.quantization import matmul_nbits_quantizer as mq

    cfg = mq.GPTQWeightOnlyQuantConfig(Reader(calib, "input"), block_size=128) if algo == "gptq" else \
        mq.RTNWeightOnlyQuantConfig()
    q = mq.MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=128, accuracy_level=4, algo_config=cfg)
    q.process()
    q.model.save_model_to_file(str(out), use_external_data_format=False)
    model = onnx.load(str(out))
    if not any(o.domain == "com.microsoft" for o in model.opset_import):  # its output omits it: onnx.checker
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))  # refuses, onnxruntime loads
        onnx.save(model, str(out))


def candidates(key: str, src: Path, calib: Path, tmp: Path) -> list[tuple[str, str, object]]:
    """(row name, how it was made, a function writing it to a path) for one model; with ``--old``,
    each onnxcomp row twice, the second built by the old commit's onnxcomp."""
    rows = _candidates(key, src, calib, tmp, ONNXCOMP)
    for label, exe in OLD:
        rows += [(f"{name} ({label})", how, make) for name, how, make in
                 _candidates(key, src, calib, tmp / "old", exe) if how.startswith("onnxcomp")]
    return rows


def _candidates(key: str, src: Path, calib: Path, tmp: Path, exe: Path) -> list[tuple[str, str, object]]:
    tmp.mkdir(exist_ok=True)
    q = ["quantize", str(src), "--data", str(calib)]
    if key == "vit_digits":
        return [("onnxcomp quantize int4", "onnxcomp " + " ".join(q[:1] + ["M"] + q[2:] + VIT),
                 lambda out: onnxcomp(q + VIT + ["-o", str(out)], exe)),
                ("ort MatMulNBits RTN", "MatMulNBitsQuantizer(bits=4, block_size=128, accuracy_level=4)",
                 lambda out: ort_nbits(src, calib, out, "rtn")),
                ("ort MatMulNBits GPTQ", "... algo_config=GPTQWeightOnlyQuantConfig(calib, block_size=128)",
                 lambda out: ort_nbits(src, calib, out, "gptq"))]
    if key == "resnet_digits":
        pruned = tmp / "resnet_digits.channels50.onnx"
        steps = [["prune", "--structured", str(src), "--ratio", "0.5", "--data", str(calib), "-o", str(pruned)]]
        return [("onnxcomp prune --structured", "onnxcomp prune --structured M --ratio 0.5 --data calib.npz",
                 lambda out: onnxcomp(steps[0][:-1] + [str(out)], exe)),
                ("... then onnxcomp quantize", "onnxcomp quantize channels50.onnx --data calib.npz",
                 lambda out: (onnxcomp(steps[0], exe), onnxcomp(["quantize", str(pruned), "--data", str(calib),
                                                                  "-o", str(out)], exe)))]
    return [("onnxcomp quantize int8", "onnxcomp quantize M --data calib.npz",
             lambda out: onnxcomp(q + ["-o", str(out)], exe)),
            ("ort quantize_static", "quantize_static(QDQ, per_channel, QInt8 weights, QUInt8 activations)",
             lambda out: ort_static(src, calib, out))]


def run_model(m, tmp: Path, runs: int) -> list[dict]:
    from onnxcomp.measure.bench import bench

    rows = [{"model": m.key, "variant": "fp32", "how": "original", "path": m.path, "build_s": 0.0}]
    for i, (name, how, make) in enumerate(candidates(m.key, m.path, m.calib, tmp)):
        out = tmp / f"{m.key}.{i}.onnx"
        t0 = time.perf_counter()
        try:
            make(out)
            rows.append({"model": m.key, "variant": name, "how": how, "path": out,
                         "build_s": time.perf_counter() - t0})
        except Exception as exc:  # noqa: BLE001 - a quantizer that fails is a row with its error
            rows.append({"model": m.key, "variant": name, "how": how, "error": str(exc).splitlines()[0][:200]})
        print(f"{m.key} {name}: built", file=sys.stderr)
    for r in rows:
        if "path" not in r:
            continue
        try:
            r["quality"], r["metrics"] = m.measure(onnx.load(str(r["path"])))
        except Exception as exc:  # noqa: BLE001 - e.g. onnxruntime cannot load it
            r["error"] = f"does not load or run: {str(exc).strip().splitlines()[-1][:200]}"
            del r["path"]
    ok = [r for r in rows if "path" in r]
    shapes = {"x": (1, 3, 640, 640)} if m.key == "ocr_det_ppocrv4" else None
    report = bench([r["path"] for r in ok], threads=1, runs=runs if shapes is None else max(10, runs // 20),
                   warmup=5, input_shapes=shapes)
    for r, e in zip(ok, report.entries):
        r.update(size=e.file_size, p50_ms=e.p50_ms, loaded_rss=e.loaded_rss, running_rss=e.running_rss,
                 ratios={k: e.ratios.get(k) for k in ("file_size", "p50_ms", "loaded_rss", "running_rss")})
    base = rows[0].get("quality")
    for r in rows:
        r["metric"], r["target"] = m.metric, TARGETS.get(m.key, "")
        if r.get("quality") is not None and base is not None:
            r["drop"] = base - r["quality"]
        r.pop("path", None)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=None, help="A built corpus cache (../shared/corpus/setup.sh).")
    ap.add_argument("--models", nargs="*", default=["vit_digits", "effnet_lite0", "ocr_det_ppocrv4", "resnet_digits"])
    ap.add_argument("--runs", type=int, default=300, help="Timed runs per model (OCR: a twentieth).")
    ap.add_argument("--old", default=None, help="Also build each onnxcomp row with onnxcomp at this commit.")
    args = ap.parse_args()
    models = real_models(args.corpus, [k for k in args.models if k != "vit_digits"])
    if "vit_digits" in args.models:
        from common import RealModel, _digits_accuracy

        vit = MODELS / "vit_digits.onnx"
        models.insert(0, RealModel("vit_digits", vit, MODELS / "digits_calib.npz", "accuracy", _digits_accuracy,
                                   _digits_accuracy(onnx.load(str(vit))) - 0.005))
    with tempfile.TemporaryDirectory() as t:
        if args.old:
            OLD.append((f"old {args.old}", install_old(args.old, Path(t))))
        rows = [r for m in models for r in run_model(m, Path(t), args.runs)]

    def ratio(r, k):
        v = r.get("ratios", {}).get(k)
        return "-" if v is None else f"{v:.2f}x"

    show = [[r["model"], r["variant"], "-" if r.get("quality") is None else f"{r['metric']} {r['quality']:.4f}",
             "-" if r.get("drop") is None else f"{r['drop']:+.4f}", ratio(r, "file_size"), ratio(r, "p50_ms"),
             ratio(r, "loaded_rss"), ratio(r, "running_rss"), f"{r.get('build_s', 0):.1f}", r.get("error", "")]
            for r in rows]
    print(table(["model", "variant", "quality", "drop", "size", "p50", "loaded RSS", "running RSS", "build s",
                 "error"], show))
    for key, target in TARGETS.items():
        if any(r["model"] == key for r in rows):
            print(f"target {key}: {target}")
    write_json("runtime", {"rows": rows, "runs": args.runs, "threads": 1, "old": args.old})


if __name__ == "__main__":
    main()
