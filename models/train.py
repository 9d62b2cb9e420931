"""Train and export the two reference digit classifiers used by onnxcomp.

Usage (from the repo root, in a venv with torch 2.13.0, onnx, onnxruntime,
numpy and scikit-learn):

    python models/train.py

Writes, next to this file:
    resnet_digits.onnx     ResNet-style CNN, BatchNormalization nodes kept
    mobilenet_digits.onnx  MobileNet-style CNN, BatchNorm folded into convs
    digits_test.npz        held-out test set: input [450,1,16,16] f32, labels [450] i64
    digits_calib.npz       calibration set: input [128,1,16,16] f32 (train split only)

Data: scikit-learn's load_digits (8x8, values 0..16), scaled to [0,1] and
upsampled to 16x16 with bilinear interpolation (align_corners=False).
Split: train_test_split(test_size=450, stratify=y, random_state=0).
"""
import os
import random
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = os.path.dirname(os.path.abspath(__file__))
EPOCHS = 35
BATCH = 64
OPSET = 17


def seed_everything(seed=0):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def load_data():
    """Return (x_train, y_train, x_test, y_test); x is float32 [N,1,16,16] in [0,1]."""
    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    x = x.clamp(0.0, 1.0).numpy()
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=450, stratify=y, random_state=0)
    return x_tr, y_tr, x_te, y_te


def checked_split():
    """(x_train, y_train, x_test, y_test) for the scripts of the other models: 2 threads, seeds set,
    and the test split checked against digits_test.npz, so they never train on the test digits."""
    torch.set_num_threads(2)
    seed_everything(0)
    x_tr, y_tr, x_te, y_te = load_data()
    with np.load(os.path.join(HERE, "digits_test.npz")) as z:
        assert np.array_equal(z["input"], x_te) and np.array_equal(z["labels"], y_te), "split differs"
    return x_tr, y_tr, x_te, y_te


def random_shift(x, gen):
    """Shift each image by an independent random offset in {-1,0,1}^2 (zero fill)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))
    offs = torch.randint(0, 3, (n, 2), generator=gen)
    out = torch.empty_like(x)
    for dy in range(3):
        for dx in range(3):
            idx = ((offs[:, 0] == dy) & (offs[:, 1] == dx)).nonzero(as_tuple=True)[0]
            out[idx] = padded[idx, :, dy:dy + h, dx:dx + w]
    return out


# ----------------------------------------------------------------- models ---
def conv_bn(cin, cout, k=3, stride=1, groups=1):
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True),
                                  *conv_bn(cout, cout, 3, 1))
        self.short = (nn.Identity() if stride == 1 and cin == cout
                      else nn.Sequential(*conv_bn(cin, cout, 1, stride)))

    def forward(self, x):
        return F.relu(self.body(x) + self.short(x))


class ResNetDigits(nn.Module):
    """Stem 3x3/32, stages 32-64-128 (2 basic blocks each, stride 2 between), GAP, Linear."""

    def __init__(self, widths=(32, 64, 128), blocks=2, classes=10):
        super().__init__()
        layers = [*conv_bn(1, widths[0]), nn.ReLU(inplace=True)]
        cin = widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(cin, w, 2 if (i > 0 and b == 0) else 1))
                cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.head(torch.flatten(x, 1))


def dw_separable(cin, cout, stride):
    return [*conv_bn(cin, cin, 3, stride, groups=cin), nn.ReLU6(inplace=True),
            *conv_bn(cin, cout, 1), nn.ReLU6(inplace=True)]


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear project, + identity."""

    def __init__(self, c, expand=2):
        super().__init__()
        h = c * expand
        self.body = nn.Sequential(*conv_bn(c, h, 1), nn.ReLU6(inplace=True),
                                  *conv_bn(h, h, 3, 1, groups=h), nn.ReLU6(inplace=True),
                                  *conv_bn(h, c, 1))

    def forward(self, x):
        return x + self.body(x)


class MobileNetDigits(nn.Module):
    """Stem 3x3/32, depthwise-separable blocks 32-64-128-128-256 (two stride 2), one
    inverted residual at 128 channels, GAP, Linear."""

    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn(1, 32), nn.ReLU6(inplace=True),   # 16x16
            *dw_separable(32, 64, 1),                   # 16x16
            *dw_separable(64, 128, 2),                  # 8x8
            InvertedResidual(128),                      # 8x8
            *dw_separable(128, 128, 1),                 # 8x8
            *dw_separable(128, 256, 2),                 # 4x4
            *dw_separable(256, 256, 1),                 # 4x4
        )
        self.head = nn.Linear(256, classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.head(torch.flatten(x, 1))


# ------------------------------------------------------- train / export ---
def train(model, x_tr, y_tr, epochs=EPOCHS, lr=3e-3):
    gen = torch.Generator().manual_seed(0)
    x_tr, y_tr = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    steps = (len(x_tr) + BATCH - 1) // BATCH
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=epochs,
                                                steps_per_epoch=steps)
    model.train()
    for ep in range(epochs):
        perm = torch.randperm(len(x_tr), generator=gen)
        total, correct = 0.0, 0
        for i in range(steps):
            idx = perm[i * BATCH:(i + 1) * BATCH]
            xb, yb = random_shift(x_tr[idx], gen), y_tr[idx]
            out = model(xb)
            loss = F.cross_entropy(out, yb, label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            correct += (out.argmax(1) == yb).sum().item()
        if ep % 5 == 4 or ep == epochs - 1:
            print(f"  epoch {ep + 1:3d}  loss {total / len(x_tr):.4f}  "
                  f"train acc {correct / len(x_tr):.4f}")
    model.eval()
    return model


def export(model, path, fold_bn):
    model.eval()
    dummy = torch.zeros(2, 1, 16, 16)
    kw = {} if fold_bn else dict(training=torch.onnx.TrainingMode.PRESERVE,
                                 do_constant_folding=False)
    torch.onnx.export(model, (dummy,), path, dynamo=False, opset_version=OPSET,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **kw)
    m = onnx.load(path)
    onnx.checker.check_model(m)
    return m


def export_dynamo(model, path):
    """The same model through torch's dynamo exporter (torch 2.13's default), dynamic batch."""
    program = torch.onnx.export(model, (torch.zeros(2, 1, 16, 16),), dynamo=True, input_names=["input"],
                                output_names=["logits"], dynamic_shapes=({0: torch.export.Dim.AUTO},))
    onnx.save(program.model_proto, path)
    m = onnx.load(path)
    onnx.checker.check_model(m)
    return m


def op_counts(m):
    counts = {}
    for n in m.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def ort_logits(path, x):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def check_and_report(model, path, ops, x_te, y_te, t_train):
    """Assert onnxruntime's logits equal torch's (within 1e-4); print train time, file size, ops
    and the onnxruntime test accuracy, which is returned."""
    with torch.no_grad():
        ref = model(torch.from_numpy(x_te)).numpy()
    got = ort_logits(path, x_te)
    max_diff = float(np.abs(ref - got).max())
    assert max_diff < 1e-4, f"onnxruntime differs from torch by {max_diff}"
    acc = float((got.argmax(1) == y_te).mean())
    print(f"  train time {t_train:.1f} s, file {os.path.getsize(path) / 1e6:.2f} MB, "
          f"ort-vs-torch max |diff| {max_diff:.2e}")
    print(f"  ops: {dict(sorted(ops.items()))}")
    print(f"  TEST ACCURACY (onnxruntime, n={len(y_te)}): {acc:.4f}")
    return acc


def main():
    torch.set_num_threads(2)
    seed_everything(0)
    x_tr, y_tr, x_te, y_te = load_data()
    print(f"train {x_tr.shape}  test {x_te.shape}")

    np.savez_compressed(os.path.join(HERE, "digits_test.npz"), input=x_te, labels=y_te)
    calib_idx = np.random.default_rng(1).choice(len(x_tr), 128, replace=False)
    np.savez_compressed(os.path.join(HERE, "digits_calib.npz"), input=x_tr[calib_idx])

    specs = [("resnet_digits", ResNetDigits, False),
             ("mobilenet_digits", MobileNetDigits, True)]
    t_all = time.time()
    for name, cls, fold_bn in specs:
        seed_everything(0)
        model = cls()
        n_params = sum(p.numel() for p in model.parameters())
        print(f"\n== {name}: {n_params:,} parameters")
        t0 = time.time()
        train(model, x_tr, y_tr)
        t_train = time.time() - t0
        path = os.path.join(HERE, f"{name}.onnx")
        m = export(model, path, fold_bn)
        ops = op_counts(m)

        n_bn = ops.get("BatchNormalization", 0)
        if fold_bn:
            assert n_bn == 0, "BatchNorm should be folded"
            assert any(a.name == "group" and a.i > 1
                       for n in m.graph.node if n.op_type == "Conv" for a in n.attribute)
        else:
            assert n_bn > 0 and ops.get("Add", 0) > 0, "BatchNorm/Add should be kept"
        check_and_report(model, path, ops, x_te, y_te, t_train)
    print(f"\ntotal training+export time {time.time() - t_all:.1f} s")


if __name__ == "__main__":
    main()
