"""Calibration data: sources, re-iteration, validation with one-line errors naming the expected spec."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxcomp import CalibrationData, load_data
from onnxcomp.data.calibration import RANDOM_NOTE, load_labels
from onnxcomp.cli import main
from onnxcomp.errors import ConfigError, DataError

from . import models as M

SPEC = "x[N,3,8,8] float32"


def one_line_error(capsys, argv, *expect: str) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    for text in expect:
        assert text in captured.err, captured.err
    return captured.err


@pytest.fixture
def model():
    return M.conv_bn_relu()


@pytest.fixture
def model_file(tmp_path, model):
    return str(M.save(model, tmp_path / "m.onnx"))


def _x(n, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=(n, 3, 8, 8)).astype(dtype)


def test_npz_batches_are_reiterable_and_limited(tmp_path, model):
    np.savez(tmp_path / "d.npz", x=_x(40), labels=np.arange(40) % 5)
    data = load_data(str(tmp_path / "d.npz"), model, batch_size=16, num_samples=35)
    assert isinstance(data, CalibrationData) and load_data(data, model) is data
    first = [b["x"] for b in data]
    second = [b["x"] for b in data]
    assert [len(b) for b in first] == [16, 16, 3]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert data.num_samples == 35 and data.input_names == ["x"] and not data.random
    assert data.labels is not None and len(data.labels) == 40


def test_float64_is_converted_and_noted(tmp_path, model):
    np.savez(tmp_path / "d.npz", x=_x(4, dtype=np.float64))
    data = load_data(str(tmp_path / "d.npz"), model)
    assert next(iter(data))["x"].dtype == np.float32
    assert "float64 converted to float32" in data.description


def test_random_data_is_flagged_seeded_and_sized(model):
    data = load_data(None, model, batch_size=4, num_samples=10, seed=3)
    batches = list(data)
    assert data.random and RANDOM_NOTE in data.description
    assert [b["x"].shape for b in batches] == [(4, 3, 8, 8), (4, 3, 8, 8), (2, 3, 8, 8)]
    assert np.array_equal(batches[0]["x"], next(iter(load_data(None, model, batch_size=4, seed=3)))["x"])


def _token_model():
    """ids[N, 8] int64 into a 50-row embedding table (also read by Shape), and a 0/1 mask."""
    table = helper.make_tensor("emb", TensorProto.FLOAT, [50, 4], np.linspace(-1, 1, 200).tolist())
    nodes = [helper.make_node("Shape", ["ids"], ["n"]),
             helper.make_node("Unsqueeze", ["ids", "ax"], ["ids3"]),
             helper.make_node("Gather", ["emb", "ids3"], ["e"]),
             helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["e", "m"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 8]),
                                           helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", 8, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [table, helper.make_tensor("ax", TensorProto.INT64, [1], [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_random_token_ids_span_the_vocabulary():
    # 0/1 ids would check a text model on two tokens; ids into an embedding table are drawn from
    # all its rows, and an input used otherwise (a mask) keeps 0/1
    data = load_data(None, _token_model(), batch_size=64, seed=0)
    batch = next(iter(data))
    assert batch["ids"].min() >= 0 and batch["ids"].max() == 49 and len(np.unique(batch["ids"])) == 50
    assert set(np.unique(batch["mask"])) == {0, 1}


def test_the_shape_hint_names_every_input_that_needs_sizes():
    """A transformer's token ids and mask both have a dynamic sequence length: the hint named the
    first only, and following it gave the same error for the next input."""
    model = _token_model()
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        dims[1].Clear()
        dims[1].dim_param = "seq"
    with pytest.raises(DataError, match=r"--input-shape ids=1x64,mask=1x64x1x1 with the sizes"):
        load_data(None, model)
    data = load_data(None, model, input_shapes={"ids": (2, 64), "mask": (2, 64, 1, 1)})
    assert next(iter(data))["mask"].shape == (2, 64, 1, 1)


def test_random_needs_shapes_for_dynamic_dims():
    model = M.conv_bn_relu()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].Clear()
    dims[2].dim_param = "H"
    with pytest.raises(DataError, match=r"--input-shape x=1x3x64x8 with the sizes your model takes"):
        load_data(None, model)
    data = load_data(None, model, input_shapes={"x": (2, 3, 8, 8)})
    assert next(iter(data))["x"].shape == (2, 3, 8, 8)


def test_static_batch_forces_batch_size():
    model = M.conv_bn_relu(batch=2)
    data = load_data({"x": _x(5)}, model, batch_size=16)
    assert [len(b["x"]) for b in data] == [2, 2]  # the partial batch cannot run


def test_iterables_callables_and_one_shot_iterators(model):
    batches = [{"x": _x(3)}, {"x": _x(3, 1)}]
    assert sum(len(b["x"]) for b in load_data(batches, model)) == 6
    assert len(list(load_data(lambda: iter(batches), model))) == 1
    once = load_data(iter(batches), model)
    list(once)
    with pytest.raises(ConfigError, match="already consumed"):
        list(once)


def test_npy_file_and_folder(tmp_path, model):
    np.save(tmp_path / "all.npy", _x(6))
    assert load_data(str(tmp_path / "all.npy"), model).num_samples == 6
    folder = tmp_path / "samples"
    folder.mkdir()
    for i in range(5):
        np.save(folder / f"s{i}.npy", _x(1, i)[0])  # one sample per file, no batch axis
    data = load_data(str(folder), model, batch_size=2)
    assert data.num_samples == 5 and [len(b["x"]) for b in data] == [2, 2, 1]


def test_npy_folder_multi_input_naming(tmp_path):
    nodes = [helper.make_node("Add", ["a", "b"], ["y"])]
    model = M.make(nodes, [M.vi("a", ["N", 4]), M.vi("b", ["N", 4])], [M.vi("y", ["N", 4])])
    for key in ("0001", "0002"):
        np.save(tmp_path / f"a.{key}.npy", np.ones((2, 4), np.float32))
        np.save(tmp_path / f"b.{key}.npy", np.zeros((2, 4), np.float32))
    data = load_data(str(tmp_path), model)
    assert data.num_samples == 4 and next(iter(data))["a"].shape == (4, 4)
    (tmp_path / "b.0002.npy").unlink()
    with pytest.raises(DataError, match="'0002.npy' has no file for input 'b'"):
        load_data(str(tmp_path), model)


def test_image_folder_with_preprocess(tmp_path, model):
    Image = pytest.importorskip("PIL.Image")
    for i in range(3):
        arr = np.random.default_rng(i).integers(0, 255, (12, 10, 3)).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / f"img{i}.png")
    with pytest.raises(ConfigError, match="no preprocessing"):
        load_data(str(tmp_path), model)
    data = load_data(str(tmp_path), model, preprocess="resize=8,crop=8,mean=0.5/0.5/0.5,std=0.25/0.25/0.25")
    batch = next(iter(data))["x"]
    assert batch.shape == (3, 3, 8, 8) and batch.dtype == np.float32
    assert -2.01 <= batch.min() and batch.max() <= 2.01
    assert "crop=8x8" in data.description


def test_labels_loading(tmp_path):
    np.save(tmp_path / "y.npy", np.arange(4))
    assert list(load_labels(str(tmp_path / "y.npy"))) == [0, 1, 2, 3]
    with pytest.raises(DataError, match="one label per sample"):
        load_labels(np.arange(3), n=4)
    with pytest.raises(DataError, match="integer class index"):
        load_labels(np.ones(3, np.float32))


@pytest.mark.parametrize("case, expect", [
    ("wrong_name", "array 'input' does not match any model input"),
    ("wrong_shape", "array 'x' has shape 4x3x9x9"),
    ("wrong_dtype", "array 'x' is int32"),
    ("empty", "is empty (0 bytes)"),
    ("not_images", "holds no .npy files and no images"),
    ("missing", "does not exist"),
    ("bad_image", "is not a readable image"),
])
def test_bad_data_exits_2_with_one_line(tmp_path, capsys, model_file, case, expect):
    path = tmp_path / "data.npz"
    if case == "wrong_name":
        np.savez(path, input=_x(4))
    elif case == "wrong_shape":
        np.savez(path, x=np.zeros((4, 3, 9, 9), np.float32))
    elif case == "wrong_dtype":
        np.savez(path, x=np.zeros((4, 3, 8, 8), np.int32))
    elif case == "empty":
        path.write_bytes(b"")
    elif case in ("not_images", "bad_image"):
        path = tmp_path / "folder"
        path.mkdir()
        (path / ("a.txt" if case == "not_images" else "a.png")).write_text("not an image")
    else:
        path = tmp_path / "nowhere.npz"
    err = one_line_error(capsys, ["compare", model_file, model_file, "--data", str(path),
                                  "--preprocess", "scale=1/255"], expect)
    if case != "bad_image":
        assert SPEC in err  # names the input and its expected spec


def test_dtype_kind_and_type_probe():
    model = M.conv_bn_relu()
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
    data = load_data({"x": np.zeros((2, 3, 8, 8), np.int32)}, model)  # int32 -> int64 widens losslessly
    assert next(iter(data))["x"].dtype == np.int64
