"""Score an ONNX digit classifier on the held-out test set (numpy + onnxruntime only).

Usage:
    python models/evaluate.py MODEL.onnx

Prints JSON: {"accuracy": <top-1 accuracy>, "n": 450}
The model must take input "input" float32 [batch,1,16,16] and output logits [batch,10]
(the first output is used). Test data: digits_test.npz next to this script.
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort


def evaluate(model_path, batch=150):
    data = np.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_test.npz"))
    x, y = data["input"], data["labels"]
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    preds = [sess.run(None, {name: x[i:i + batch]})[0].argmax(1) for i in range(0, len(x), batch)]
    return {"accuracy": float((np.concatenate(preds) == y).mean()), "n": int(len(y))}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(json.dumps(evaluate(sys.argv[1])))
