"""auto --jobs / --scheduler: candidates evaluated in parallel (joblib workers, or a Dask cluster)
give the same trials, the same choice and the same written model as one after another."""
import json

import pytest

import onnxcomp as oc
from onnxcomp.algo.linalg import blas_threads
from onnxcomp.cli import main
from onnxcomp.data.calibration import load_data
from onnxcomp.pipeline import auto, candidates

from . import models as M

MOBILENET = M.MODELS / "mobilenet_digits.onnx"
CALIB = M.MODELS / "digits_calib.npz"


@pytest.fixture
def widths_only(monkeypatch):
    """Two widths, no bisection: with --search, jobs=1 and jobs=2 evaluate the same candidates."""
    monkeypatch.setattr(auto, "BITS", (6, 4))
    monkeypatch.setattr(auto, "BISECT_STEPS", 0)
    monkeypatch.setattr(auto, "MEASURED_STEPS", 0)


def _trials(out):
    return [(t.steps, t.size_ratio, t.macs_ratio, t.drop, t.ok, t.proto.SerializeToString()) for t in out.trials]


def test_jobs_2_in_worker_processes_equals_jobs_1(widths_only):
    model = oc.load(MOBILENET)
    data = load_data(str(CALIB), model.proto, num_samples=32)
    runs = {}
    for jobs in (1, 2):
        with blas_threads(1):  # the same threads per candidate: float sums in the same order
            out = auto.search(model, data, target_size=0.5, max_drop=0.05, keep_going=True, jobs=jobs, threads=1)
        runs[jobs] = (_trials(out), out.chosen.steps, out.recipe)
    assert [t[0] for t in runs[1][0]] == [[("cluster", {"bits": 6})], [("cluster", {"bits": 4})]]
    assert runs[2] == runs[1]


def test_bisection_probes_jobs_levels_per_round():
    """jobs=1 is plain bisection; jobs=3 splits the interval in 4 and keeps the part above the
    highest passing level (passing below 0.6 here)."""
    def fake(jobs):
        class Fake(auto.Search):
            def __init__(self):
                self.trials, self.goal, self.keep_going, self.jobs, self.rounds = [], None, False, jobs, []

            def evaluate_many(self, cands):
                self.rounds.append([c[0][1]["sparsity"] for c in cands])
                ts = [auto.Trial(c, 1.0, 1.0, 0.0, c[0][1]["sparsity"] < 0.6) for c in cands]
                self.trials += ts
                return ts
        return Fake()

    one, three = fake(1), fake(3)
    best1 = one.bisect(lambda x: [("prune", {"sparsity": x})], 0.0, 0.8)
    best3 = three.bisect(lambda x: [("prune", {"sparsity": x})], 0.0, 0.8)
    assert one.rounds[:2] == [[0.4], [0.6]] and best1.steps[0][1]["sparsity"] == 0.55
    assert three.rounds[:2] == [[0.2, 0.4, 0.6], [0.45, 0.5, 0.55]]
    assert 0.55 < best3.steps[0][1]["sparsity"] < 0.6 and len(three.rounds) == 4


def test_dask_local_cluster_equals_local_run(tmp_path, capsys, widths_only):
    """--scheduler runs the candidates on a dask.distributed cluster (jobs = its 2 workers): the
    same trials, recipe and written bytes as the local --jobs 1 run."""
    distributed = pytest.importorskip("distributed")
    src = tmp_path / "m.onnx"
    src.write_bytes(MOBILENET.read_bytes())
    argv = ["auto", str(src), "--data", str(CALIB), "--samples", "32", "--target-size", "0.5", "--max-drop", "0.05",
            "--search", "--threads", "1", "--json"]
    runs = {}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
        for name, extra in (("local", ["--jobs", "1"]), ("dask", ["--scheduler", cl.scheduler_address])):
            out = tmp_path / f"{name}.onnx"
            with blas_threads(1):
                assert main(argv + extra + ["-o", str(out)]) == 0
            d = json.loads(capsys.readouterr().out)
            runs[name] = (d["trials"], d["chosen"], out.read_bytes(), out.with_suffix(".yaml").read_text())
        assert cl.scheduler.task_prefixes  # the candidates ran as tasks on the cluster
    assert len(runs["local"][0]) == 2 and runs["local"][1]["steps"] == [{"cluster": {"bits": 4}}]
    assert runs["dask"] == runs["local"]


def test_scheduler_without_distributed_installed_exit_2(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    src = tmp_path / "m.onnx"
    src.write_bytes(MOBILENET.read_bytes())
    code = main(["auto", str(src), "--data", str(CALIB), "--target-size", "0.5", "--scheduler", "tcp://h:8786"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install 'onnxcomp[distributed]'" in err
    assert not (tmp_path / "m.auto.onnx").exists()


def test_unreachable_scheduler_exit_2_before_the_search(tmp_path, capsys, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr(candidates, "CONNECT_TIMEOUT", 1)
    monkeypatch.setattr(auto.Search, "__init__", lambda *a, **k: pytest.fail("the search started"))
    src = tmp_path / "m.onnx"
    src.write_bytes(MOBILENET.read_bytes())
    code = main(["auto", str(src), "--data", str(CALIB), "--target-size", "0.5", "--scheduler", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot reach the dask scheduler at tcp://127.0.0.1:9" in err


@pytest.mark.parametrize("argv,expect", [(["--jobs", "0"], "--jobs 0 is not positive"),
                                         (["--scheduler", " "], "is not an address")])
def test_bad_jobs_or_scheduler_exit_2(tmp_path, capsys, argv, expect):
    src = tmp_path / "m.onnx"
    src.write_bytes(MOBILENET.read_bytes())
    assert main(["auto", str(src), "--data", str(CALIB), "--target-size", "0.5", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expect in err


def test_api_takes_the_same_names_and_refuses_the_same_values():
    model = oc.load(MOBILENET)
    with pytest.raises(oc.ConfigError, match="jobs=0 is not positive"):
        oc.api.auto(model, None, target_size=0.5, jobs=0)
    with pytest.raises(oc.ConfigError, match="exactly one of target_size"):
        oc.api.auto(model, None, max_drop=0.01)
    with pytest.raises(oc.ConfigError, match="auto has no option"):
        oc.api.auto(model, None, target_size=0.5, workers=2)


def test_jobs_above_one_refuse_a_model_beyond_one_protobuf(monkeypatch):
    from onnxcomp.io import tensors

    monkeypatch.setattr(tensors, "PROTOBUF_LIMIT", 1000)  # mobilenet_digits: 0.8 MB of tensors
    monkeypatch.setattr(auto.Search, "__init__", lambda *a, **k: pytest.fail("the search started"))
    model = oc.load(MOBILENET)
    with pytest.raises(oc.ConfigError, match="jobs=2 sends the model to each worker as one protobuf"):
        auto.search(model, None, target_size=0.5, jobs=2)
