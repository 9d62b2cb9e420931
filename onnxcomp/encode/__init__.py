"""Storage encodings: sparse, codebook and combined; chosen per tensor by size."""
from onnxcomp.encode.select import EncodeChoice, encode_weights, register

__all__ = ["EncodeChoice", "encode_weights", "register"]
