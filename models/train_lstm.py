"""Train and export models/lstm_digits.onnx: a bidirectional LSTM that reads each digit row by row.

A real trained recurrent model, so onnxcomp's LSTM weight paths (the input weights W and the
recurrence weights R of an ONNX LSTM node) are tested on real weights: recognisers and speech
models carry most of their bytes there. It reuses models/train.py's data, split, augmentation
and seeding (same 1,347 train / 450 test split, checked against digits_test.npz). Needs torch, so
it runs in the training venv, never in onnxcomp's:

    /tmp/train-venv/bin/python models/train_lstm.py      # from the repo root

Architecture (opset 17, dynamic batch, legacy exporter: one LSTM node):
    the 16x16 image as a sequence of 16 rows of 16 values
    LSTM 16 -> 128, bidirectional (W [2, 512, 16], R [2, 512, 128])
    mean over the 16 steps, Linear 256 -> 10
Also writes lstm_digits_dynamo.onnx: the same weights through the dynamo exporter.
"""
import os
import sys
import time

import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train as T  # noqa: E402  (models/train.py: data, split, augmentation, seeds, export checks)

HIDDEN, EPOCHS, LR = 128, 40, 5e-3  # chosen once; never tuned on the test split


class LSTMDigits(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(16, HIDDEN, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * HIDDEN, 10)

    def forward(self, x):
        seq, _ = self.rnn(x[:, 0])  # [N, 16 rows, 16] -> [N, 16, 256]
        return self.head(seq.mean(1))


def main():
    x_tr, y_tr, x_te, y_te = T.checked_split()
    model = LSTMDigits()
    print(f"lstm_digits: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    t0 = time.time()
    T.train(model, x_tr, y_tr, epochs=EPOCHS, lr=LR)
    t_train = time.time() - t0
    path = os.path.join(HERE, "lstm_digits.onnx")
    m = T.export(model, path, fold_bn=True)
    ops = T.op_counts(m)
    assert ops.get("LSTM", 0) == 1 and ops.get("Gemm", 0) + ops.get("MatMul", 0) == 1
    T.check_and_report(model, path, ops, x_te, y_te, t_train)
    # the same weights through torch's dynamo exporter (torch 2.13's default): W and R are assembled
    # at load time from the torch tensors by Slice/Concat (the gates reordered), one file
    dyn = os.path.join(HERE, "lstm_digits_dynamo.onnx")
    ops = T.op_counts(T.export_dynamo(model, dyn))
    assert ops.get("LSTM", 0) == 1 and ops.get("Slice", 0) >= 8  # R (at least) assembled by Slices
    T.check_and_report(model, dyn, ops, x_te, y_te, 0.0)


if __name__ == "__main__":
    main()
