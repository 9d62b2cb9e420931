"""An interrupt at the worst moment: while main() installs its handlers, while a temp folder is
made or removed. Each signal is raised at that moment from inside the call, so these runs are
deterministic (the subprocess tests in test_hardening/test_unusual_io hit the same moments only
by chance, and did so on CI)."""
from __future__ import annotations

import signal
import tempfile
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcomp.cli as cli
from onnxcomp import io

pytestmark = pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                                reason="Python handles signals in the main thread only")


def _tiny() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_main_installs_its_handlers_exits_as_an_interrupt(monkeypatch, capsys, sig):
    """SIGTERM landing just after main() put in its SIGTERM handler, while it put in the SIGINT
    one, escaped as a traceback and exit 1 (CI, test_signal_during_start_up): it is exit 143 or
    130 and one line, and the handlers are put back."""
    real, term_before = signal.signal, signal.getsignal(signal.SIGTERM)

    def installing(signum, handler):
        previous = real(signum, handler)
        if signum == signal.SIGINT and handler is not signal.default_int_handler:
            signal.raise_signal(sig)  # arrives as the call returns
        return previous

    monkeypatch.setattr(signal, "signal", installing)
    monkeypatch.setattr(cli, "_run", lambda argv: pytest.fail("the command ran"))
    assert cli.main(["--help"]) == 128 + sig
    assert capsys.readouterr().err.strip() == "interrupted; no output written"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == (signal.SIG_DFL if term_before is None else term_before)


@pytest.mark.parametrize("when", ["made", "removed"])
def test_a_signal_while_a_temp_folder_is_made_or_removed_leaves_nothing(monkeypatch, tmp_path, when):
    """Ctrl-C just as io.save's temp folder was made (before the ``try`` that removes it) left
    ``.out.onnx.onnxcomp-...`` beside the output (CI, test_interrupt_leaves_no_output). One that
    lands while the folder is removed stopped the removal half way. Either is now held until the
    folder is made or gone, then raised: the save is interrupted and the folder holds only the
    model that was there."""
    import shutil

    from onnxcomp.io import temp

    real_mkdtemp, real_rmtree = tempfile.mkdtemp, shutil.rmtree

    def mkdtemp(*args, **kwargs):
        made = real_mkdtemp(*args, **kwargs)
        if when == "made":
            signal.raise_signal(signal.SIGINT)
        return made

    def rmtree(path, *args, **kwargs):
        if when == "removed":
            signal.raise_signal(signal.SIGINT)
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(temp.tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(temp.shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        io.save(_tiny(), tmp_path / "out.onnx")
    assert [p.name for p in tmp_path.iterdir()] == (["out.onnx"] if when == "removed" else [])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if when == "removed":  # the model was in place before the interrupt; it is a whole model
        onnx.checker.check_model(onnx.load(str(tmp_path / "out.onnx")))
    with pytest.raises(KeyboardInterrupt):
        io.atomic_file(tmp_path / "report.json", b"{}")
    assert ("report.json" in [p.name for p in tmp_path.iterdir()]) == (when == "removed")  # in place first
    assert not [p for p in tmp_path.iterdir() if ".onnxcomp-" in p.name]


def test_a_temp_folder_without_signals_is_removed_and_handlers_stay():
    """The plain path: the folder exists inside the block, is gone after it, and the handlers in
    place before are in place after."""
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with tempfile.TemporaryDirectory() as parent:
        with io.temp_folder("x.onnxcomp-1-", parent) as folder:
            assert folder.is_dir() and str(folder.parent) == parent and folder.name.startswith("x.onnxcomp-1-")
            (folder / "f").write_bytes(b"1")
        assert not folder.exists()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
