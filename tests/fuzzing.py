"""Model mutations and the command harness shared by tests/test_fuzz.py and benchmarks/fuzz_soak.py.

A mutation takes a valid tiny fixture model and damages it the way real files get damaged or the
way a hostile file could be written: dropped inputs, corrupted shapes, wrong dtypes, removed
initializers, bad attribute values, escaping external-data locations, NaN weights, truncated or
flipped bytes. :func:`run_command` runs one ``onnxcomp`` command in-process on the damaged file
and checks the contract: exit 0, 2 or 3; at most one line on stderr (``error: ...`` when it
fails); no traceback; the input unchanged; no partial or temporary file left behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from . import models as M

Draw = Callable[[st.SearchStrategy], object]


def _fixtures() -> dict[str, onnx.ModelProto]:
    return {
        "conv_bn_relu": M.conv_bn_relu(c_mid=4, hw=6),
        "constant_nodes": M.constant_node_weights(),
        "constant_of_shape": M.constant_of_shape_weights(),
        "shared": M.shared_weight(),
        "gemm_sides": M.gemm_and_matmul_sides(),
        "fp16": M.fp16_conv(),
        "qdq": M.qdq_weight(),
        "matmul": M.matmul_layer(k=8, n=6),
    }


FIXTURES = _fixtures()
FIXTURE_BYTES = {k: m.SerializeToString() for k, m in FIXTURES.items()}


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _array(t: onnx.TensorProto) -> np.ndarray | None:
    """The tensor's values, or None when an earlier mutation already broke it."""
    if t.data_location == TensorProto.EXTERNAL:
        return None
    try:
        return numpy_helper.to_array(t)
    except Exception:  # noqa: BLE001 - damaged by an earlier mutation
        return None


def _pick(draw: Draw, seq):
    return seq[draw(st.integers(0, len(seq) - 1))] if len(seq) else None


WEIRD_DIMS = [0, -1, -7, 1, 2, 3, 7, 10**6, 10**12, 2**62]
WEIRD_INTS = [0, -1, -3, 1, 2, 3, 5, 100, 10**6, 2**40, -(2**40)]


# --- proto-level mutations: each edits ``m`` in place -------------------------------------------

def drop_graph_input(m: onnx.ModelProto, draw: Draw) -> None:
    if m.graph.input:
        del m.graph.input[draw(st.integers(0, len(m.graph.input) - 1))]


def drop_graph_output(m: onnx.ModelProto, draw: Draw) -> None:
    if m.graph.output:
        del m.graph.output[draw(st.integers(0, len(m.graph.output) - 1))]


def drop_node_input(m: onnx.ModelProto, draw: Draw) -> None:
    node = _pick(draw, m.graph.node)
    if node is None or not node.input:
        return
    i = draw(st.integers(0, len(node.input) - 1))
    how = draw(st.sampled_from(["delete", "empty", "rename"]))
    if how == "delete":
        del node.input[i]
    else:
        node.input[i] = "" if how == "empty" else "no_such_tensor"


def drop_node(m: onnx.ModelProto, draw: Draw) -> None:
    if m.graph.node:
        del m.graph.node[draw(st.integers(0, len(m.graph.node) - 1))]


def corrupt_value_shape(m: onnx.ModelProto, draw: Draw) -> None:
    infos = list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info)
    vi = _pick(draw, infos)
    if vi is None:
        return
    shape = vi.type.tensor_type.shape
    how = draw(st.sampled_from(["dim", "param", "clear", "add", "elem_type"]))
    if how == "elem_type":
        vi.type.tensor_type.elem_type = draw(st.integers(0, 25))
    elif how == "clear":
        vi.type.tensor_type.ClearField("shape")
    elif how == "add":
        shape.dim.add().dim_value = draw(st.sampled_from(WEIRD_DIMS[3:]))
    elif shape.dim:
        d = shape.dim[draw(st.integers(0, len(shape.dim) - 1))]
        if how == "param":
            d.dim_param = draw(st.sampled_from(["N", "?", "", "batch size"]))
        else:
            d.dim_value = draw(st.sampled_from(WEIRD_DIMS))


def corrupt_init_dims(m: onnx.ModelProto, draw: Draw) -> None:
    t = _pick(draw, m.graph.initializer)
    if t is None:
        return
    how = draw(st.sampled_from(["set", "append", "pop", "zero", "huge"]))
    dims = list(t.dims)
    if how == "append":
        dims.append(draw(st.sampled_from([1, 2, 3])))
    elif how == "pop" and dims:
        dims.pop()
    elif how == "zero" and dims:
        dims[draw(st.integers(0, len(dims) - 1))] = 0
    elif how == "huge":
        dims = [10**6, 10**6] + dims
    elif dims:
        dims[draw(st.integers(0, len(dims) - 1))] = draw(st.sampled_from(WEIRD_DIMS))
    del t.dims[:]
    t.dims.extend(dims)


def wrong_dtype(m: onnx.ModelProto, draw: Draw) -> None:
    t = _pick(draw, m.graph.initializer)
    if t is not None:
        t.data_type = draw(st.integers(0, 25))


def remove_initializer(m: onnx.ModelProto, draw: Draw) -> None:
    if m.graph.initializer:
        del m.graph.initializer[draw(st.integers(0, len(m.graph.initializer) - 1))]


def initializer_as_input(m: onnx.ModelProto, draw: Draw) -> None:
    """Older exporters list initializers among the graph inputs too (valid, must still work)."""
    for t in m.graph.initializer:
        m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))


def bad_attribute(m: onnx.ModelProto, draw: Draw) -> None:
    node = _pick(draw, m.graph.node)
    if node is None:
        return
    name = draw(st.sampled_from(["group", "strides", "pads", "kernel_shape", "dilations", "transB",
                                 "transA", "axis", "alpha", "auto_pad", "epsilon", "value", "to"]))
    kind = draw(st.sampled_from(["int", "ints", "float", "string", "tensor"]))
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    if kind == "int":
        node.attribute.append(helper.make_attribute(name, draw(st.sampled_from(WEIRD_INTS))))
    elif kind == "ints":
        n = draw(st.integers(0, 5))
        values = [draw(st.sampled_from(WEIRD_INTS)) for _ in range(n)]
        node.attribute.append(helper.make_attribute(name, values, attr_type=onnx.AttributeProto.INTS))
    elif kind == "float":
        node.attribute.append(helper.make_attribute(name, draw(st.sampled_from([0.0, -1.0, math.nan, math.inf]))))
    elif kind == "string":
        node.attribute.append(helper.make_attribute(name, draw(st.sampled_from(["", "SAME_UPPER", "x" * 50]))))
    else:
        node.attribute.append(helper.make_attribute(name, numpy_helper.from_array(np.zeros((0,), np.float32))))


def change_op_type(m: onnx.ModelProto, draw: Draw) -> None:
    node = _pick(draw, m.graph.node)
    if node is not None:
        node.op_type = draw(st.sampled_from(["Conv", "Gemm", "MatMul", "ConvTranspose", "Relu", "Identity",
                                             "Reshape", "FooBar", "If", "Loop", "ConstantOfShape", ""]))


def change_domain(m: onnx.ModelProto, draw: Draw) -> None:
    node = _pick(draw, m.graph.node)
    if node is not None:
        node.domain = draw(st.sampled_from(["com.microsoft", "ai.onnx.ml", "evil.domain"]))


def change_opset(m: onnx.ModelProto, draw: Draw) -> None:
    version = draw(st.sampled_from([-1, 0, 1, 5, 6, 7, 9, 11, 13, 21, 22, 99, 2**40]))
    how = draw(st.sampled_from(["set", "clear", "duplicate"]))
    if how == "clear":
        del m.opset_import[:]
    elif how == "duplicate" or not m.opset_import:
        m.opset_import.append(helper.make_opsetid("", version))
    else:
        m.opset_import[0].version = version


def change_ir_version(m: onnx.ModelProto, draw: Draw) -> None:
    m.ir_version = draw(st.sampled_from([0, 1, 2, 3, 4, 7, 9, 10, 11, 12, 99, 2**40]))


def duplicate_output(m: onnx.ModelProto, draw: Draw) -> None:
    if len(m.graph.node) >= 2:
        a, b = draw(st.integers(0, len(m.graph.node) - 1)), draw(st.integers(0, len(m.graph.node) - 1))
        if m.graph.node[a].output and m.graph.node[b].output:
            m.graph.node[b].output[0] = m.graph.node[a].output[0]


def cycle(m: onnx.ModelProto, draw: Draw) -> None:
    """Feed the last node's output back into the first node."""
    nodes = m.graph.node
    if nodes and nodes[0].input and nodes[-1].output:
        nodes[0].input[0] = nodes[-1].output[0]


def bad_values(m: onnx.ModelProto, draw: Draw) -> None:
    """NaN / Inf / huge values in a float weight."""
    floats = [t for t in m.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    t = _pick(draw, floats)
    if t is None:
        return
    a = _array(t)
    if a is not None and a.size:
        a = a.copy()
        with np.errstate(over="ignore"):  # 1e30 is inf in fp16: fine, that is the point
            a.reshape(-1)[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e30]))
        t.CopyFrom(numpy_helper.from_array(a, t.name))


def bad_raw_data(m: onnx.ModelProto, draw: Draw) -> None:
    t = _pick(draw, m.graph.initializer)
    if t is None:
        return
    how = draw(st.sampled_from(["short", "long", "empty", "both"]))
    a = _array(t)
    raw = t.raw_data or (a.tobytes() if a is not None else b"")
    if how == "short":
        t.raw_data = raw[: len(raw) // 2]
    elif how == "long":
        t.raw_data = raw + raw[:3] + b"\x00"
    elif how == "empty":
        t.ClearField("raw_data")
        t.ClearField("float_data")
    else:
        t.float_data.extend([1.0, 2.0])
        t.raw_data = raw


def external_location(m: onnx.ModelProto, draw: Draw) -> None:
    """Point a tensor at external data: escaping, absolute, missing, or with absurd offsets."""
    t = _pick(draw, m.graph.initializer)
    if t is None:
        return
    loc = draw(st.sampled_from(["../outside.bin", "/etc/passwd", "missing.bin", "", "sub/../../x.bin",
                                "model.onnx", ".", "/dev/zero", "a\x00b"]))
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    entry = t.external_data.add()
    entry.key, entry.value = "location", loc
    if draw(st.booleans()):
        for key in ("offset", "length"):
            e = t.external_data.add()
            e.key, e.value = key, str(draw(st.sampled_from([-1, 0, 7, 10**15])))


def huge_constant_of_shape(m: onnx.ModelProto, draw: Draw) -> None:
    """A ConstantOfShape shape asking for terabytes (or negative / zero dims)."""
    dims = draw(st.sampled_from([[10**6, 10**6, 3, 3], [4, -3, 3, 3], [0, 3, 3, 3], [2**40, 1, 1, 1]]))
    for t in m.graph.initializer:
        if t.data_type == TensorProto.INT64 and len(t.dims) == 1:
            t.CopyFrom(numpy_helper.from_array(np.array(dims, np.int64), t.name))
            return


def metadata(m: onnx.ModelProto, draw: Draw) -> None:
    """Metadata that would do harm if anything evaluated it."""
    text = draw(st.sampled_from(["__import__('os').system('touch /tmp/onnxcomp_pwned')",
                                 "{{7*7}}", "\x1b[2J", "a" * 10000, "$(touch pwned)"]))
    p = m.metadata_props.add()
    p.key, p.value = draw(st.sampled_from(["preprocess", "onnxcomp", "", "\n"])), text
    m.doc_string = text
    m.producer_name = text


PROTO_MUTATIONS = [drop_graph_input, drop_graph_output, drop_node_input, drop_node, corrupt_value_shape,
                   corrupt_init_dims, wrong_dtype, remove_initializer, initializer_as_input, bad_attribute,
                   change_op_type, change_domain, change_opset, change_ir_version, duplicate_output, cycle,
                   bad_values, bad_raw_data, external_location, huge_constant_of_shape, metadata]


# --- byte-level mutations -------------------------------------------------------------------------

def truncate(data: bytes, draw: Draw) -> bytes:
    return data[: draw(st.integers(0, max(0, len(data) - 1)))]


def flip(data: bytes, draw: Draw) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(buf) - 1))
        buf[i] ^= draw(st.integers(1, 255))
    return bytes(buf)


def splice(data: bytes, draw: Draw) -> bytes:
    """Insert random bytes somewhere (a corrupted download)."""
    i = draw(st.integers(0, len(data)))
    return data[:i] + draw(st.binary(min_size=1, max_size=16)) + data[i:]


BYTE_MUTATIONS = [truncate, flip, splice]


@st.composite
def mutated_models(draw) -> tuple[str, bytes, list[str]]:
    """(fixture name, the damaged file's bytes, the mutations applied)."""
    name = draw(st.sampled_from(sorted(FIXTURES)))
    m = _copy(FIXTURES[name])
    applied = []
    for mut in draw(st.lists(st.sampled_from(PROTO_MUTATIONS), min_size=0, max_size=3)):
        mut(m, draw)
        applied.append(mut.__name__)
    data = m.SerializeToString()
    if not applied or draw(st.integers(0, 3)) == 0:
        mut = draw(st.sampled_from(BYTE_MUTATIONS))
        data = mut(data, draw) if data else data
        applied.append(mut.__name__)
    return name, data, applied


# --- the harness ----------------------------------------------------------------------------------

COMMON = ["--num-samples", "2"]
WRITING = {
    "prune": ["--sparsity", "0.5", "--min-params", "1"],
    "prune-structured": ["--structured", "--ratio", "0.5"],
    "cluster": ["--bits", "2", "--min-params", "1"],
    "factorize": ["--min-params", "1"],
    "depthwise": ["--min-params", "1"],
    "compress": ["--prune", "0.5", "--bits", "2"],
}


@dataclass
class Outcome:
    code: int
    err: str
    out: str


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def argv_for(command: str, model: Path, folder: Path, original: Path | None = None) -> tuple[list[str], set[str]]:
    """The argv of ``command`` on ``model`` and the files it may create in ``folder`` on success."""
    out = folder / "out.onnx"
    if command == "inspect":
        return ["inspect", str(model)], set()
    if command == "compare":
        return ["compare", str(original or model), str(model), *COMMON], set()
    if command == "pack":
        return ["pack", str(model), "-o", str(folder / "out.onnxc")], {"out.onnxc"}
    verb = "prune" if command == "prune-structured" else command
    return [verb, str(model), *WRITING[command], *COMMON, "-o", str(out)], {"out.onnx", "out.onnx.data"}


def run_main(argv: list[str]) -> Outcome:
    from onnxcomp.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return Outcome(code, err.getvalue(), out.getvalue())


def check_contract(command: str, folder: Path, model: Path, original: Path | None = None,
                   fd_err: Callable[[], str] | None = None) -> Outcome:
    """Run one command on ``model`` and assert the bad-input contract; return the outcome.

    ``fd_err`` returns what reached file descriptor 2 directly (onnxruntime's C++ logger), e.g.
    ``lambda: capfd.readouterr().err``: it counts towards the one stderr line.
    """
    argv, may_create = argv_for(command, model, folder, original)
    return check_argv(argv, folder, may_create, fd_err)


def check_argv(argv: list[str], folder: Path, may_create: set[str],
               fd_err: Callable[[], str] | None = None) -> Outcome:
    """Run ``onnxcomp argv`` in-process and assert the contract: exit 0, 2 or 3; at most one
    stderr line, ``error: ...`` on failure; no traceback; every file already in ``folder``
    unchanged; nothing created but ``may_create`` (and only on success)."""
    before = {p.name: sha(p) for p in folder.iterdir()}
    if fd_err is not None:
        fd_err()
    result = run_main(argv)
    if fd_err is not None:
        result.err += fd_err()
    where = f"{argv}: exit {result.code}, stderr {result.err!r}"
    assert result.code in (0, 2, 3), where
    lines = [ln for ln in result.err.splitlines() if ln.strip()]
    assert len(lines) <= 1, where
    assert "Traceback" not in result.err + result.out, where
    if result.code != 0:
        assert lines and lines[0].startswith("error: "), where
    after = {p.name: p for p in folder.iterdir()}
    for name, digest in before.items():
        assert name in after and sha(after[name]) == digest, f"{where}: {name} was modified"
    created = set(after) - set(before)
    allowed = may_create if result.code in (0, 3) else set()
    assert created <= allowed, f"{where}: left {sorted(created - allowed)}"
    return result
