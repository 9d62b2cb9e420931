"""The only layer that touches the file system for models: load (with checks), lazy external
tensors, the one atomic writer, and onnxruntime (limits, sessions).

The names below are the layer's face (``from onnxcomp import io; io.load(path)``); inside the
package, modules import each other directly.
"""
from onnxcomp.io.checks import available_memory, check_allocation
from onnxcomp.io.memory import release
from onnxcomp.io.loader import load
from onnxcomp.io.model import Model, ModelLike, as_model, load_model, proto_of
from onnxcomp.io.ort import compatible_ir, default_opset, ort_limits, quiet_ort, verify_file
from onnxcomp.io.tensors import (compact, inline_copy, is_lazy, lazy_tensors, model_bytes, needs_external_data,
                                 serialize, session_source, stored_size, tensor_array, tensor_bytes)
from onnxcomp.io.temp import sweep_stale, temp_folder, temp_prefix
from onnxcomp.io.writer import atomic_file, check_output, default_output, discard, save, shelter, write_model

__all__ = ["available_memory", "check_allocation", "release", "load", "Model", "ModelLike", "as_model", "load_model",
           "proto_of", "compatible_ir", "default_opset", "ort_limits", "quiet_ort", "verify_file", "compact",
           "inline_copy", "is_lazy", "lazy_tensors", "model_bytes", "needs_external_data", "serialize",
           "session_source", "stored_size", "tensor_array", "tensor_bytes", "atomic_file", "check_output", "default_output",
           "discard", "save", "shelter", "sweep_stale", "temp_folder", "temp_prefix", "write_model"]
