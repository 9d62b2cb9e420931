"""Train and export models/tcn_digits.onnx: a 1-D conv net (a temporal conv net, as in audio front
ends and keyword spotters) that reads each digit row by row.

A real trained model whose convs are 1-D, so onnxcomp's 1-D conv paths (factorize, depthwise,
quantize, prune, cluster on ``Conv`` weights ``[O, C, k]``) are tested on real weights. It reuses
models/train.py's data, split, augmentation and seeding (same 1,347 train / 450 test split, checked
against digits_test.npz). Needs torch, so it runs in the training venv, never in onnxcomp's:

    /tmp/train-venv/bin/python models/train_tcn.py      # from the repo root

Architecture (opset 17, dynamic batch, legacy exporter, BatchNorm folded into the convs):
    the 16x16 image as a signal of 16 steps (rows) with 16 features (columns)
    Conv1d 16 -> 64, k 3, pad 1, ReLU
    Conv1d 64 -> 128, k 5, pad 2, ReLU
    Conv1d 128 -> 128, k 3, stride 2, pad 1, ReLU      (16 -> 8 steps)
    Conv1d 128 -> 128, k 3, dilation 2, pad 2, ReLU
    mean over the steps, Linear 128 -> 10
"""
import os
import sys
import time

import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train as T  # noqa: E402  (models/train.py: data, split, augmentation, seeds, export checks)

EPOCHS, LR = 35, 3e-3  # train.py's defaults; never tuned on the test split


def conv_bn(cin, cout, k, stride=1, dilation=1):
    return nn.Sequential(nn.Conv1d(cin, cout, k, stride, padding=dilation * (k // 2), dilation=dilation, bias=False),
                         nn.BatchNorm1d(cout), nn.ReLU(inplace=True))


class TCNDigits(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(conv_bn(16, 64, 3), conv_bn(64, 128, 5), conv_bn(128, 128, 3, stride=2),
                                  conv_bn(128, 128, 3, dilation=2))
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        seq = x[:, 0].transpose(1, 2)  # [N, 1, 16 rows, 16 cols] -> [N, 16 features, 16 steps]
        return self.head(self.body(seq).mean(2))


def main():
    x_tr, y_tr, x_te, y_te = T.checked_split()
    model = TCNDigits()
    print(f"tcn_digits: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    t0 = time.time()
    T.train(model, x_tr, y_tr, epochs=EPOCHS, lr=LR)
    t_train = time.time() - t0
    path = os.path.join(HERE, "tcn_digits.onnx")
    m = T.export(model, path, fold_bn=True)
    ops = T.op_counts(m)
    kernels = [len(i.dims) for i in m.graph.initializer if len(i.dims) == 3]
    assert ops.get("Conv", 0) == 4 and len(kernels) == 4 and ops.get("BatchNormalization", 0) == 0
    T.check_and_report(model, path, ops, x_te, y_te, t_train)


if __name__ == "__main__":
    main()
