"""Train and export models/vit_sdpa_digits.onnx: a small ViT whose attention is written the way
Hugging Face transformers writes it, so its exports carry the shapes computed at run time.

vit_digits.onnx reshapes with constant targets (``[-1, 17, 8, 32]``); models exported from
transformers (BERT, ViT, sentence embedders) instead split the heads with
``view(*x.shape[:-1], -1, head_dim)``, call ``scaled_dot_product_attention`` and merge with
``reshape(*x.shape[:-1], -1)``: the exporters turn these into Shape/Gather/Slice/Concat chains and,
for the dynamo exporter, fold the batch and head axes together around Kᵀ. A real trained model
with these graphs tests that structured pruning removes heads there too. Same data, split,
augmentation and training as vit_digits (train_vit.train), narrower. Needs torch:

    /tmp/train-venv/bin/python models/train_vit_sdpa.py      # from the repo root

Architecture (pre-norm ViT, opset 17, dynamic batch): Conv 4x4/4 1->128 (16 tokens), class token,
position embeddings, 2 x [x + MHSA(LN(x)), x + MLP(LN(x))] with separate q/k/v Linear 128->128,
4 heads of 32, MLP 128->512->128 (GELU), final LayerNorm, class token, Linear 128->10.
Also writes vit_sdpa_digits_dynamo.onnx: the same weights through the dynamo exporter, and
vit_mha_digits(_dynamo).onnx: the same weights through nn.MultiheadAttention (fused q/k/v).
"""
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train as T  # noqa: E402  (models/train.py: data, split, seeds, export checks)
import train_vit as V  # noqa: E402  (the ViT blocks and its training loop)

WIDTH, DEPTH, HEADS, MLP = 128, 2, 4, 512


class SdpaAttention(V.Attention):
    """q/k/v split into heads by shapes read at run time, as transformers' BERT/ViT do."""

    def forward(self, x):
        hidden = (*x.shape[:-1], -1, self.head_dim)
        q, k, v = (p(x).view(hidden).transpose(1, 2) for p in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(*x.shape[:-1], -1).contiguous())


class FusedAttention(nn.Module):
    """The same attention through nn.MultiheadAttention (one fused q/k/v projection), as
    torch.nn.TransformerEncoderLayer and torchvision's ViT use it."""

    def __init__(self, attn):
        super().__init__()
        self.mha = nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)
        with torch.no_grad():
            self.mha.in_proj_weight.copy_(torch.cat([attn.q.weight, attn.k.weight, attn.v.weight]))
            self.mha.in_proj_bias.copy_(torch.cat([attn.q.bias, attn.k.bias, attn.v.bias]))
            self.mha.out_proj.weight.copy_(attn.proj.weight)
            self.mha.out_proj.bias.copy_(attn.proj.bias)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


def build():
    model = V.ViTDigits(dim=WIDTH, depth=DEPTH, heads=HEADS, mlp=MLP)
    for block in model.blocks:
        attn = SdpaAttention(WIDTH, HEADS)
        attn.load_state_dict(block.attn.state_dict())
        block.attn = attn
    return model


def main():
    x_tr, y_tr, x_te, y_te = T.checked_split()
    model = build()
    print(f"vit_sdpa_digits: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    t0 = time.time()
    V.train(model, x_tr, y_tr)
    t_train = time.time() - t0
    path = os.path.join(HERE, "vit_sdpa_digits.onnx")
    m = T.export(model, path, fold_bn=True)
    ops = T.op_counts(m)
    assert ops.get("Shape", 0) >= DEPTH and ops.get("Softmax", 0) == DEPTH  # run-time shapes kept
    T.check_and_report(model, path, ops, x_te, y_te, t_train)
    dyn = os.path.join(HERE, "vit_sdpa_digits_dynamo.onnx")
    ops = T.op_counts(T.export_dynamo(model, dyn))
    assert ops.get("Shape", 0) >= DEPTH and ops.get("Softmax", 0) == DEPTH
    T.check_and_report(model, dyn, ops, x_te, y_te, 0.0)
    # the same weights through nn.MultiheadAttention (one fused in_proj), both exporters
    for block in model.blocks:
        block.attn = FusedAttention(block.attn)
    model.eval()
    legacy = os.path.join(HERE, "vit_mha_digits.onnx")
    m = T.export(model, legacy, fold_bn=True)
    ops = T.op_counts(m)
    assert ops.get("Gather", 0) >= 3 * DEPTH and ops.get("Softmax", 0) == DEPTH
    T.check_and_report(model, legacy, ops, x_te, y_te, 0.0)
    mha = os.path.join(HERE, "vit_mha_digits_dynamo.onnx")
    ops = T.op_counts(T.export_dynamo(model, mha))
    assert ops.get("Gather", 0) >= 3 * DEPTH and ops.get("Softmax", 0) == DEPTH  # q/k/v picked from one tensor
    T.check_and_report(model, mha, ops, x_te, y_te, 0.0)


if __name__ == "__main__":
    main()
