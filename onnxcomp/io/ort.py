"""What the installed onnxruntime accepts: IR/opset limits (probed once), load checks, quiet logging."""
from __future__ import annotations

import functools
from pathlib import Path

import onnx
from onnx import helper

from onnxcomp.errors import ModelLoadError, first_line
from onnxcomp.runtime import quiet_ort


MIN_ORT_OPSET = 7


@functools.lru_cache(maxsize=1)
def ort_limits() -> tuple[int, int]:
    """(max IR version, max default-domain opset) the installed onnxruntime accepts, probed once."""
    ort = quiet_ort()

    def runs(ir: int, opset: int) -> bool:
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])], "probe",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = ir
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return True
        except Exception:  # noqa: BLE001 - any failure means "not supported"
            return False

    max_ir = next((ir for ir in range(onnx.IR_VERSION, 3, -1) if runs(ir, 13)), 7)
    max_opset = next((o for o in range(onnx.defs.onnx_opset_version(), 6, -1) if runs(max_ir, o)), 13)
    return max_ir, max_opset


def default_opset(model: onnx.ModelProto) -> int:
    """The model's opset for the default ONNX domain (1 if it declares none)."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


def ort_load_error(path: Path) -> str | None:
    """None if onnxruntime creates a session from the file, else the first line of its error."""
    ort = quiet_ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # a load check only
    try:
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        return first_line(exc).replace("[ONNXRuntimeError] : ", "")
    return None


def check_runnable(model: onnx.ModelProto, name: str = "the model") -> None:
    """Raise a one-line error if onnxruntime cannot run this IR version / opset."""
    max_ir, max_opset = ort_limits()
    opset = default_opset(model)
    if model.ir_version > max_ir:
        # save() lowers the IR version when the opset allows it; loading is still fine
        pass
    if opset > max_opset:
        raise ModelLoadError(
            f"{name} uses opset {opset}, newer than the installed onnxruntime supports (max {max_opset})",
            "upgrade onnxruntime or convert with onnx.version_converter.convert_version(model, "
            f"{max_opset})")
    if opset < MIN_ORT_OPSET:
        raise ModelLoadError(
            f"{name} uses opset {opset}; onnxruntime runs opset {MIN_ORT_OPSET} and newer",
            f"convert it with onnx.version_converter.convert_version(model, {MIN_ORT_OPSET + 4})")


def set_default_opset(model: onnx.ModelProto, opset: int) -> None:
    """Set the default-domain opset to ``opset`` and the IR version to what it needs (at most what
    onnxruntime accepts). The caller knows every op of the graph means the same there."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = opset
    needed_ir = next((row[1] for row in helper.VERSION_TABLE if row[2] == opset), model.ir_version)
    model.ir_version = min(max(model.ir_version, needed_ir), ort_limits()[0])


def compatible_ir(model: onnx.ModelProto) -> None:
    """Lower the IR version in place to what the installed onnxruntime accepts, when above it."""
    max_ir, _ = ort_limits()
    if model.ir_version > max_ir:
        model.ir_version = max_ir
    if model.ir_version < 4:  # IR 3 requires every initializer to be a graph input as well
        listed = {i.name for i in model.graph.input}
        for t in model.graph.initializer:
            if t.name not in listed:
                model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))


def verify_file(path: Path) -> None:
    """Run onnx.checker on the file and create an onnxruntime session from it (raise on failure)."""
    ort = quiet_ort()

    onnx.checker.check_model(str(path))
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    # a load check only: constant-folding big in-graph decoders here would cost ~8x their weights
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
