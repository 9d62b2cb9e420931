"""The committed ViT (models/vit_digits.onnx): loads, its MatMul/Gemm weights are found, and it
keeps its documented test accuracy (models/README.md)."""
import numpy as np
import onnx
import onnxruntime as ort

from onnxcomp.graph.weights import find_weights

from . import models as M

VIT = M.MODELS / "vit_digits.onnx"
DOCUMENTED_ACCURACY = 0.9822  # models/README.md, vit_digits.onnx


def test_vit_weights_are_found():
    model = onnx.load(str(VIT))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("LayerNormalization") == 9 and ops.count("Softmax") == 4
    weights = find_weights(model)
    matmul = [w for w in weights if "matmul_b" in w.roles]
    gemm = [w for w in weights if "gemm_b" in w.roles]
    # per block: q, k, v, attention output, MLP in (256x1024) and out (1024x256); attention's
    # own two MatMuls per block multiply activations and hold no weight
    assert len(matmul) == 6 * 4 and len(gemm) == 1 and gemm[0].shape == (10, 256)
    assert sorted({w.shape for w in matmul}) == [(256, 256), (256, 1024), (1024, 256)]
    assert sum(w.size for w in matmul + gemm) > 3_000_000


def test_vit_accuracy_holds():
    test = np.load(M.MODELS / "digits_test.npz")
    sess = ort.InferenceSession(str(VIT), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    logits = sess.run(None, {"input": test["input"]})[0]
    assert logits.shape == (450, 10)
    assert (logits.argmax(1) == test["labels"]).mean() >= DOCUMENTED_ACCURACY - 0.005
