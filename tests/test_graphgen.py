"""Generated valid-but-unusual models (tests/graphgen.py) through every command.

Each example builds one model and runs one command on it, with real-shaped ``--data`` or without,
in-process. The contract (tests/fuzzing.py ``check_argv``): exit 0, 2 or 3 only, one ``error:``
line on failure, no traceback, the input untouched, nothing left behind. On top, for every model
a command writes: onnxruntime runs it, it keeps the input's outputs, every output value is finite
where the input model's is (no silent NaN), and prune / cluster / compress write nothing larger
than the input. Derandomized: CI runs the same MODELS examples each time.
"""
from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings

from . import fuzzing as F
from . import graphgen as G

MODELS = 500  # generated models per run (>= 300), one command each (~30-60 s on 2 busy cores)
COMMANDS = {
    "prune": ["--sparsity", "0.5", "--min-params", "1"],
    "structured": ["--structured", "--ratio", "0.5", "--round-to", "1"],
    "prune-channels": ["--ratio", "0.3", "--round-to", "1"],
    "cluster": ["--bits", "2", "--min-params", "1"],
    "factorize": ["--min-params", "1"],
    "depthwise": ["--min-params", "1"],
    "compress": ["--sparsity", "0.5", "--bits", "2"],
    "auto": ["--target-size", "0.6", "--max-drop", "1"],
    "sensitivity": ["--min-params", "1", "--levels", "0.5"],
    "compare": [],
    "bench": ["--runs", "2", "--warmup", "0"],
    "inspect": [],
    "pack": [],
}
WEIGHTS = {"prune": 3, "structured": 2, "prune-channels": 1, "cluster": 3, "factorize": 2, "depthwise": 1,
           "compress": 3, "auto": 2, "sensitivity": 1, "compare": 1, "bench": 1, "inspect": 1, "pack": 1}
CYCLE = [c for c, w in WEIGHTS.items() for _ in range(w)]
# a case's command and data follow from a hash of its model, evenly over ORDER (hypothesis' own
# choice favours the first ones) and the same when hypothesis replays it; bench (a worker process
# per model: ~1.5 s) only in the half with data
ORDER = [(c, True) for c in CYCLE] + [(c if c != "bench" else "inspect", False) for c in CYCLE]
SIZE_COMMANDS = {"prune", "cluster", "compress"}
WRITES = {"prune", "structured", "prune-channels", "cluster", "factorize", "depthwise", "compress", "auto"}
SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


def run_model(path: Path, case: G.Case) -> list[dict[str, np.ndarray]]:
    """The model's outputs on the case's inputs, one dict per run (batches of the fixed batch)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    x = case.feeds["x"]
    step = case.batch or len(x)
    return [dict(zip(names, sess.run(None, {"x": x[i:i + step]}))) for i in range(0, len(x), step)]


def file_bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def argv_of(command: str, model: Path, folder: Path, data: Path | None) -> tuple[list[str], set[str]]:
    extra = ["--data", str(data)] if data is not None else []
    verb = "prune" if command == "structured" else command
    if command == "inspect":
        return ["inspect", str(model)], set()
    if command == "compare":
        return ["compare", str(model), str(model), *extra], set()
    if command == "bench":
        return ["bench", str(model), *COMMANDS["bench"]], set()
    if command == "pack":
        return ["pack", str(model), "-o", str(folder / "out.onnxc")], {"out.onnxc"}
    if command == "sensitivity":
        return ["sensitivity", str(model), *COMMANDS[command], *extra], set()
    created = {"out.onnx", "out.onnx.data"} | ({"out.yaml"} if command == "auto" else set())
    return [verb, str(model), *COMMANDS[command], *extra, "-o", str(folder / "out.onnx")], created


def check_case(case: G.Case, command: str, with_data: bool, capfd) -> int:
    with tempfile.TemporaryDirectory(prefix="onnxcomp-gen-") as tmp:
        folder = Path(tmp)
        model = folder / "model.onnx"
        onnx.save_model(case.model, str(model))
        data = None
        if with_data:
            data = folder / "data.npz"
            np.savez(data, **case.feeds)
        ref = run_model(model, case)
        argv, may_create = argv_of(command, model, folder, data)
        outcome = F.check_argv(argv, folder, may_create, fd_err=lambda: capfd.readouterr().err)
        where = f"{argv}: {case.describe()}\n{outcome.out[-1500:]}"
        out = folder / "out.onnx"
        if command in WRITES and outcome.code in (0, 3):
            got = run_model(out, case)
            assert sorted(got[0]) == sorted(ref[0]), f"{where}: outputs {sorted(got[0])} != {sorted(ref[0])}"
            for run_ref, run_got in zip(ref, got):
                for name, r in run_ref.items():
                    assert np.isfinite(run_got[name])[np.isfinite(r)].all(), \
                        f"{where}: non-finite values in {name!r} where the input model's are finite"
            if command in SIZE_COMMANDS:
                before, after = model.stat().st_size, file_bytes(out)
                assert after <= before, f"{where}: output {after} bytes > input {before} bytes"
        if command == "pack" and outcome.code == 0:
            back = folder / "back.onnx"
            F.check_argv(["unpack", str(folder / "out.onnxc"), "-o", str(back)], folder, {"back.onnx"},
                         fd_err=lambda: capfd.readouterr().err)
            assert back.read_bytes() == model.read_bytes(), where
        return outcome.code


FEATURES = ["conv1d", "conv2d", "conv3d", "convT", "/g", "gemm", "matmul", "matmul_batched", "matmul_left",
            "if", "loop", "function", "f16", "f64", "bf16", "constant", "shared", "output", "nan", "inf",
            "denormal", "extreme", "zeros", "opset7", "opset22", "batch-fixed", "batch-dynamic"]


def _features(case: G.Case) -> set[str]:
    """The generator features one case exercises (tag prefixes, opset, batch)."""
    tags = set(case.tags) | {f"opset{case.model.opset_import[0].version}",
                             "batch-fixed" if case.batch else "batch-dynamic"}
    return {f for f in FEATURES if any(t == f or t.startswith(f) or f in t for t in tags)}


def test_generated_models_through_every_command(capfd):
    seen: Counter = Counter()
    features: Counter = Counter()

    @settings(max_examples=MODELS, **SETTINGS)
    @given(case=G.cases())
    def check(case):
        command, with_data = ORDER[int(hashlib.sha256(case.model.SerializeToString()).hexdigest(), 16) % len(ORDER)]
        code = check_case(case, command, with_data, capfd)
        seen[command, code] += 1
        features.update(_features(case))

    check()
    assert sum(seen.values()) >= MODELS
    assert {c for c, _ in seen} == set(COMMANDS)  # every command ran
    assert {f: n for f, n in features.items() if n >= 3}.keys() == set(FEATURES), features  # every feature, often
    assert sum(n for (c, code), n in seen.items() if code == 0 and c in WRITES) > MODELS // 3  # most are written
