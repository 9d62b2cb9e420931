"""Train and export models/vgg_digits.onnx: a small VGG-style 3x3 conv stack for the digits task.

The factorize benchmark needs a *trained* plain 3x3 conv stack (the ONNX zoo's light_vgg19 has
no trained weights). This script reuses models/train.py (same data, split, augmentation,
optimiser, schedule and seeds) and needs torch, so it runs in the training venv, never in
onnxcomp's:

    /tmp/train-venv/bin/python benchmarks/train_vgg_digits.py      # from the repo root

Architecture (BatchNorm folded into the convs at export, opset 17, dynamic batch):
    [Conv3x3 1->48, ReLU] [Conv3x3 48->48, ReLU] MaxPool2  (16x16)
    [Conv3x3 48->96, ReLU] [Conv3x3 96->96, ReLU] MaxPool2  (8x8)
    [Conv3x3 96->192, ReLU] [Conv3x3 192->192, ReLU]         (4x4)
    GlobalAveragePool, Linear 192->10
"""
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "models"))
import train as T  # noqa: E402  (models/train.py: data, training loop, export)

WIDTHS = (48, 96, 192)


class VGGDigits(nn.Module):
    """Two 3x3 conv+BN+ReLU per stage, max-pool between stages, GAP, Linear."""

    def __init__(self, widths=WIDTHS, classes=10):
        super().__init__()
        layers, cin = [], 1
        for i, w in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                layers += [*T.conv_bn(cin, w, 3), nn.ReLU(inplace=True)]
                cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.head(torch.flatten(x, 1))


def main():
    torch.set_num_threads(2)
    T.seed_everything(0)
    x_tr, y_tr, x_te, y_te = T.load_data()
    with np.load(os.path.join(ROOT, "models", "digits_test.npz")) as z:
        assert np.array_equal(z["input"], x_te) and np.array_equal(z["labels"], y_te), "split differs"
    model = VGGDigits()
    print(f"vgg_digits: {sum(p.numel() for p in model.parameters()):,} parameters")
    t0 = time.time()
    T.train(model, x_tr, y_tr)
    t_train = time.time() - t0
    path = os.path.join(ROOT, "models", "vgg_digits.onnx")
    m = T.export(model, path, fold_bn=True)
    ops = T.op_counts(m)
    assert ops.get("BatchNormalization", 0) == 0, "BatchNorm should be folded"
    T.check_and_report(model, path, ops, x_te, y_te, t_train)


if __name__ == "__main__":
    main()
