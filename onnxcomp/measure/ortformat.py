"""onnxruntime's mobile tooling: convert to the .ort format, summarise the mobile usability checker."""
from __future__ import annotations

import contextlib
import io as _io
import logging
import tempfile
from pathlib import Path
from typing import Any

MOBILE_EPS = (("NNAPI", "check_nnapi_partitions", None),
              ("CoreML NeuralNetwork", "check_coreml_partitions", "coreml_supported_neuralnetwork_ops.md"),
              ("CoreML MLProgram", "check_coreml_partitions", "coreml_supported_mlprogram_ops.md"))


def to_ort(model: str | Path, out_dir: str | Path) -> tuple[Path | None, str | None]:
    """Convert to ``<out_dir>/<stem>.ort`` as onnxruntime's converter does (fixed optimizations).

    Returns (path, None) or (None, one-line reason).
    """
    import onnxruntime as ort

    out = Path(out_dir) / (Path(model).stem + ".ort")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(out)
    opts.add_session_config_entry("session.save_model_format", "ORT")
    try:
        ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - e.g. UINT4 initializers cannot be saved to .ort
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return None, f"cannot convert {Path(model).name} to .ort: {first}"
    if not out.is_file():
        return None, f"onnxruntime wrote no .ort file for {Path(model).name}"
    return out, None


def _partition(uc: Any, fn: str, cfg: str | None, model: Any, fixed: bool) -> Any:
    if cfg is None:
        return getattr(uc, fn)(model, require_fixed_input_sizes=fixed)
    return getattr(uc, fn)(model, require_fixed_input_sizes=fixed, config_filename=cfg)


def mobile_check(model: str | Path) -> dict[str, Any]:
    """Which share of the graph NNAPI / CoreML would take, in how many partitions, and verdicts.

    Mirrors ``python -m onnxruntime.tools.check_onnx_model_mobile_usability`` (BASIC optimizations
    first). ``{"error": ...}`` when the tool is missing or fails.
    """
    try:
        from onnxruntime.tools import onnx_model_utils as omu
        from onnxruntime.tools.mobile_helpers import usability_checker as uc
    except ImportError:
        return {"error": "onnxruntime's mobile usability checker (onnxruntime.tools.mobile_helpers) is "
                         "not available in this onnxruntime install"}
    quiet = logging.getLogger("onnxcomp.mobile")
    quiet.setLevel(logging.CRITICAL)
    try:
        from onnxcomp.io.temp import temp_prefix as io_temp_prefix

        with tempfile.TemporaryDirectory(prefix=io_temp_prefix("onnxcomp-mobile")) as tmp, \
                contextlib.redirect_stdout(_io.StringIO()):
            opt = Path(tmp) / Path(model).name
            omu.optimize_model(Path(model), opt, use_external_initializers=True)
            shaped = omu.ModelProtoWithShapeInfo(opt).model_with_shape_info
            dynamic, _ = uc.check_shapes(shaped.graph, quiet)
            eps = {}
            for name, fn, cfg in MOBILE_EPS:
                info = _partition(uc, fn, cfg, shaped, True)
                entry = {"nodes": info.num_nodes, "supported_nodes": info.num_supported_nodes,
                         "partitions": info.num_partitions,
                         "unsupported_ops": sorted(info.unsupported_ops),
                         "suitability": info.suitability().name}
                if dynamic and entry["suitability"] != "YES":
                    fixed = _partition(uc, fn, cfg, shaped, False)
                    entry["with_fixed_shapes"] = {"supported_nodes": fixed.num_supported_nodes,
                                                  "partitions": fixed.num_partitions,
                                                  "suitability": fixed.suitability().name}
                eps[name] = entry
    except Exception as exc:  # noqa: BLE001 - the checker is best effort
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return {"error": f"mobile usability check failed: {first}"}
    return {"dynamic_inputs": [getattr(i, "name", str(i)) for i in dynamic], "providers": eps}


def mobile_lines(name: str, result: dict[str, Any]) -> list[str]:
    """Human summary of :func:`mobile_check`."""
    if "error" in result:
        return [f"mobile check {name}: {result['error']}"]
    lines = [f"mobile check {name}:" + (f" dynamic inputs {', '.join(result['dynamic_inputs'])}"
                                        if result["dynamic_inputs"] else " all input shapes fixed")]
    for ep, e in result["providers"].items():
        share = e["supported_nodes"] / e["nodes"] if e["nodes"] else 0.0
        text = (f"  {ep}: {e['supported_nodes']}/{e['nodes']} nodes ({100 * share:.0f} %) in "
                f"{e['partitions']} partition(s) -> {e['suitability']}")
        if "with_fixed_shapes" in e:
            f = e["with_fixed_shapes"]
            text += (f"; with fixed input shapes {f['supported_nodes']}/{e['nodes']} nodes in "
                     f"{f['partitions']} partition(s) -> {f['suitability']}")
        if e["unsupported_ops"]:
            text += f"; unsupported: {', '.join(e['unsupported_ops'][:8])}"
        lines.append(text)
    return lines
