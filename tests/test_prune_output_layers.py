"""With data (OBS: later layers absorb part of an earlier layer's error) an output layer, whose
error nothing absorbs, is never pruned beyond the target by the threshold allocations; without
data the allocation is left alone. On real digit-model weights."""
import numpy as np
import onnx
import pytest

import onnxcomp as oc
from onnxcomp.data.calibration import load_data
from onnxcomp.graph.reach import output_layers
from onnxcomp.graph.subgraph import expose, truncate
from onnxcomp.graph.weights import find_weights

from . import models as M

VIT = M.MODELS / "vit_digits.onnx"
MLP_OUT = "/blocks/blocks.3/mlp/mlp.2/MatMul_output_0"  # the last block's MLP down projection
DOWN = "onnx::MatMul_322"
CALIB = M.MODELS / "digits_calib.npz"  # its weight, 1024x256: LAMP prunes it hardest of all the layers


def ends_in_the_mlp() -> onnx.ModelProto:
    """vit_digits cut after its last MLP: the down projection becomes the output layer."""
    return truncate(expose(onnx.load(VIT), [MLP_OUT]), [MLP_OUT])


def kernels(model: onnx.ModelProto):
    return [w for w in find_weights(model) if not w.is_bias]


@pytest.mark.parametrize("name", ["resnet", "mobilenet", "vgg", "vit"])
def test_the_classifier_is_the_output_layer(name):
    model = onnx.load(M.MODELS / f"{name}_digits.onnx")
    assert output_layers(model, kernels(model)) == {"head.weight"}


def test_a_truncated_model_ends_in_its_last_matmul():
    model = ends_in_the_mlp()
    assert output_layers(model, kernels(model)) == {DOWN}


@pytest.mark.parametrize("allocation", ["lamp", "global"])
def test_output_layer_held_at_the_target(allocation):
    model = ends_in_the_mlp()
    data = load_data(str(CALIB), model, num_samples=32)
    result = oc.prune(model, 0.9, allocation=allocation, encoding="dense", data=data).results[0]
    levels = {c.name: c.detail["sparsity"] for c in result.applied}
    assert levels[DOWN] == pytest.approx(0.9, abs=0.005)  # uncapped: 0.94 (lamp)
    before = sum(c.params_before for c in result.applied)
    after = sum(c.params_after for c in result.applied)
    assert 1 - after / before == pytest.approx(0.9, abs=0.01)  # the others make up the budget
    assert any("output layer(s) held at the target" in n and "/blocks/blocks.3/mlp/mlp.2/MatMul" in n
               for n in result.notes)  # named by its layer: the exporter named the weight from a counter
    assert max(levels.values()) > 0.9  # still layer-adaptive elsewhere


def test_without_data_the_allocation_is_left_alone():
    result = oc.prune(ends_in_the_mlp(), 0.9, encoding="dense").results[0]
    levels = {c.name: c.detail["sparsity"] for c in result.applied}
    assert levels[DOWN] > 0.93  # LAMP's own level: nothing refits the layers before it
    assert not any("output layer" in n for n in result.notes)


def test_curves_allocation_keeps_each_layer_under_its_cap():
    """The measured-curves allocator: the cheapest layer would take 0.98; capped at 0.5 it stops
    there and the others make up the budget."""
    from onnxcomp.algo.allocation import from_curves

    levels = np.array([0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98])
    losses = np.array([levels * 0.01, levels ** 2, levels ** 3])
    sizes = [2000, 2000, 2000]
    free = from_curves(levels, losses, sizes, 0.7)
    capped = from_curves(levels, losses, sizes, 0.7, cap=[0.5, 0.98, 0.98])
    assert free[0] > 0.9 and capped[0] <= 0.5
    for got in (free, capped):
        assert 0.7 - 1e-6 <= np.dot(got, sizes) / sum(sizes) <= 0.72  # the budget met (a fine-grid step over)
