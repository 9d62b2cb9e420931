"""The quantize pass (:mod:`.quantize`): onnxruntime's integer formats with onnxcomp's calibration."""
