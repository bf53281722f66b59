"""What only the Gradio app needs, one module per concern, in the order a request meets them:

``inputs`` (the upload decoded safely within limits, the options checked) -> ``pipeline`` (one onnxruntime
session and one NumPy deconvnet per process; forward passes and projections cached per upload) -> ``views`` (All
layers, the layer explorer, the class view) and ``paper`` (occlusion, invariance, atlas, sanity checks, model
health) -> ``store`` (the PNG files the page shows) and ``text`` (captions, timings, model card) -> ``tabs`` (one
builder per tab) -> ``ui`` (the page, its errors and its launch). The UI only wires components to functions.
"""
