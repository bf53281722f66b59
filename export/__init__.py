"""Export a VGG to one self-contained .onnx file with every activation and switch as outputs (``python -m export``).

The export itself lives in ``export.onnx_export`` (``export_onnx``, ``ExportCheckError``); this package file
imports nothing, so that ``python -m export`` can say what to install when PyTorch is missing.
"""
