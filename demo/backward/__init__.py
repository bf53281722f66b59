"""The NumPy backward stage: onnxruntime's activations and switches -> pixel space."""
