"""quantir.frontends: lower ONNX (and later PyTorch) models into the quantir IR."""
