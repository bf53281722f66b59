"""Export a VGG to one self-contained .onnx file with every activation and switch as outputs (``python -m export``)."""

from export.onnx_export import ExportCheckError, export_onnx

__all__ = ["ExportCheckError", "export_onnx"]
