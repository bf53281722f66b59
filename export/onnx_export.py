"""A VGG (batch norm folded) -> one self-contained .onnx file that a deconvnet can run on without PyTorch.

The graph takes ``image`` (N, 3, H, W) float32, normalised RGB, with N, H and W dynamic (H and W multiples of
16), and returns, named by ``base.spec.OUTPUT_NAMES``:

- ``probs`` (N, K): softmax of the logits,
- ``conv1_1`` ... ``conv5_3`` (N, C, H', W'): every conv activation after its ReLU,
- ``pool1_switches`` ... ``pool4_switches`` (N, C, H'/2, W'/2) int64: the switches, per-plane indices
  (``base.spec.SWITCH_CONVENTION``).

The file's metadata (``metadata_props``, JSON values, keys ``base.spec.META_*``) carries the class names,
mean/std, input size, layer names, switch convention and a short model card.

``export_onnx`` checks its own output before it reports success: the ONNX checker, then onnxruntime against
PyTorch on three inputs (the float outputs must agree to 1e-4, the switches must point at the same values and
lie in their own 2x2 window). The file is written under a temporary name and moved into place only then.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from base import spec
from model.vgg import VGG, adaptive_pool_matrix, fold_batch_norm

ATOL = 1e-4  # largest allowed |onnxruntime - torch| of a float output (scaled by its magnitude above 1)
GRAPH_NAME = "vgg16_deconvnet"
# The conv whose activation each pool takes (the last conv of its block): {"pool1": "conv1_2", ...}.
POOL_INPUT = {spec.pool_below(conv): spec.CONV_LAYERS[i - 1]
              for i, conv in enumerate(spec.CONV_LAYERS) if spec.pool_below(conv)}


class ExportCheckError(RuntimeError):
    """The exported graph disagrees with PyTorch; ``report`` holds the measured differences."""

    def __init__(self, message: str, report: dict) -> None:
        super().__init__(message)
        self.report = report


def adaptive_avg_pool(x: Tensor, out: tuple[int, int]) -> Tensor:
    """``F.adaptive_avg_pool2d(x, out)`` for (N, C, H, W) as two small matmuls, exportable with dynamic H, W."""
    _, _, H, W = x.shape
    return adaptive_pool_matrix(H, out[0]) @ x @ adaptive_pool_matrix(W, out[1]).T


class ExportableVGG(nn.Module):
    """Wraps a VGG for export: batch norm folded; forward returns the tuple named by ``spec.OUTPUT_NAMES``."""

    def __init__(self, model: VGG) -> None:
        super().__init__()
        self.model = (fold_batch_norm(model) if model.batch_norm else model).eval()

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        features, activations, switches = self.model.forward_features(image, record=True)
        if self.model.head == "gmp":
            logits = self.model.forward_head(features)
        else:  # torchvision: pool5, adaptive 7x7 average pool, classifier; exportable with dynamic H, W
            pooled = adaptive_avg_pool(F.max_pool2d(features, 2, 2), (7, 7))
            logits = self.model.classifier(pooled.flatten(1))
        return (torch.softmax(logits, dim=1), *(activations[n] for n in spec.CONV_LAYERS),
                *(switches[p] for p in spec.POOL_LAYERS))


def metadata(class_names: list[str], input_size: int, model_card: dict) -> dict[str, str]:
    """The metadata_props of the file: ``spec.META_*`` keys, JSON values."""
    after = {conv: pool for pool, conv in POOL_INPUT.items()}
    layers = [name for conv in spec.CONV_LAYERS for name in (conv, after.get(conv)) if name]
    return {
        spec.META_CLASS_NAMES: json.dumps(list(class_names)),
        spec.META_MEAN: json.dumps(list(spec.MEAN)),
        spec.META_STD: json.dumps(list(spec.STD)),
        spec.META_INPUT_SIZE: json.dumps(int(input_size)),
        spec.META_LAYERS: json.dumps(layers),
        spec.META_SWITCHES: json.dumps(spec.SWITCH_CONVENTION),
        spec.META_MODEL_CARD: json.dumps(model_card),
    }



def check_inputs(input_size: int, fixed: bool = False, seed: int = 0) -> list[np.ndarray]:
    """Three test images (N, 3, H, W) float32: one, a batch of two, and (unless ``fixed``) a non-square one.

    Sizes are multiples of 16 around ``input_size``; values are normalised-image-like (standard normal).
    """
    rng = np.random.default_rng(seed)
    s = max(spec.SIZE_MULTIPLE, input_size // spec.SIZE_MULTIPLE * spec.SIZE_MULTIPLE)
    shapes = [(1, 3, s, s), (2, 3, s, s), (1, 3, s, s) if fixed else (1, 3, s + 16, max(16, s - 16))]
    return [rng.standard_normal(shape, dtype=np.float32) for shape in shapes]


def _window_ok(switches: np.ndarray, width_in: int) -> bool:
    """Whether every per-plane switch (N, C, h, w) lies inside its own 2x2 window of the (2h, 2w) input."""
    _, _, h, w = switches.shape
    row, col = np.divmod(switches, width_in)
    return bool((row // 2 == np.arange(h)[:, None]).all() and (col // 2 == np.arange(w)[None, :]).all())


def compare(session, module: ExportableVGG, images: list[np.ndarray], atol: float = ATOL) -> dict:
    """onnxruntime ``session`` against ``module`` on each of ``images``; differences per output (worst case).

    Float outputs: max |ort - torch|, and ``scale`` = max |torch| (the check allows ``atol * max(1, scale)``).
    Switches: ``switch_value_diff`` = max difference of the activation values the two sets of indices point at,
    ``switch_index_flips`` = how many indices differ (near-ties; harmless when the values agree), and whether
    onnxruntime's indices all lie in their own 2x2 window.
    """
    diffs: dict[str, float] = {}
    scales: dict[str, float] = {}
    flips: dict[str, int] = {}
    value_diffs: dict[str, float] = {}
    windows: dict[str, bool] = {}
    failures: list[str] = []
    for x in images:
        with torch.no_grad():
            ref = [t.numpy() for t in module(torch.from_numpy(x))]
        got = session.run(list(spec.OUTPUT_NAMES), {spec.INPUT_NAME: x})
        by_name = dict(zip(spec.OUTPUT_NAMES, zip(ref, got, strict=True), strict=True))
        for name in (spec.PROBS_NAME, *spec.ACTIVATION_OUTPUTS):
            r, g = by_name[name]
            if r.shape != g.shape:
                failures.append(f"{name}: shape {g.shape} != {r.shape} for input {x.shape}")
                continue
            diffs[name] = max(diffs.get(name, 0.0), float(np.abs(r - g).max()))
            scales[name] = max(scales.get(name, 0.0), float(np.abs(r).max()))
        for pool in spec.POOL_LAYERS:
            name = spec.switch_output(pool)
            r, g = by_name[name]
            if r.shape != g.shape or g.dtype != np.int64:
                failures.append(f"{name}: {g.dtype}{g.shape} != {r.dtype}{r.shape} for input {x.shape}")
                continue
            act = by_name[POOL_INPUT[pool]][0]  # torch's activation before the pool (N, C, H, W)
            N, C, H, W = act.shape
            planes = act.reshape(N, C, H * W)
            if g.min() < 0 or g.max() >= H * W:
                failures.append(f"{name}: indices outside the (H, W) plane, not per-plane switches")
                continue
            v_ref = np.take_along_axis(planes, r.reshape(N, C, -1), axis=2)
            v_got = np.take_along_axis(planes, g.reshape(N, C, -1), axis=2)
            value_diffs[name] = max(value_diffs.get(name, 0.0), float(np.abs(v_ref - v_got).max()))
            flips[name] = flips.get(name, 0) + int((r != g).sum())
            windows[name] = windows.get(name, True) and _window_ok(g, W)
    for name, d in diffs.items():
        if d > atol * max(1.0, scales[name]):
            failures.append(f"{name}: max |onnxruntime - torch| = {d:.3g} > {atol:g} * max(1, {scales[name]:.3g})")
    for name, d in value_diffs.items():
        if d > atol * max(1.0, scales[POOL_INPUT[name.removesuffix('_switches')]]):
            failures.append(f"{name}: switches point at values that differ by {d:.3g}")
        if not windows[name]:
            failures.append(f"{name}: a switch lies outside its own 2x2 window")
    return {"max_abs_diff": diffs, "scale": scales, "switch_value_diff": value_diffs,
            "switch_index_flips": flips, "switch_in_window": windows, "failures": failures,
            "inputs": [list(x.shape) for x in images]}


def export_onnx(model: VGG, path: str | Path, class_names: list[str] | None = None,
                input_size: int = spec.INPUT_SIZE, model_card: dict | None = None,
                check_images: list[np.ndarray] | None = None, atol: float = ATOL, quiet: bool = True) -> dict:
    """Export ``model`` to the single file ``path`` and check it against PyTorch; return the check's report.

    Args:
        model: a VGG (batch norm, if any, is folded here; the model itself is not modified).
        path: the .onnx file to write (weights inside, no external data).
        class_names: one name per output class (default: cat-12 breeds for 12 classes, else ``class_i``).
        input_size: side in pixels the model expects (metadata only; the graph takes any multiple of 16).
        model_card: a short JSON-able description (data, accuracy, training config); stored as metadata.
        check_images: the three (N, 3, H, W) float32 inputs for the onnxruntime check (default:
            ``check_inputs(input_size)``); tests pass small ones.
        atol: tolerance of the float outputs, see ``compare``.
        quiet: silence the exporter's progress lines.

    Returns a dict: path, bytes, opset, seconds, and ``compare``'s differences. Raises ``ExportCheckError`` (and
    leaves no file at ``path``) when the checker or the comparison fails.
    """
    import onnx
    import onnxruntime as ort

    start = time.perf_counter()
    path = Path(path)
    if class_names is None:
        class_names = (list(spec.CAT12_BREEDS) if model.num_classes == len(spec.CAT12_BREEDS)
                       else [f"class_{i}" for i in range(model.num_classes)])
    if len(class_names) != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {model.num_classes} classes")
    module = ExportableVGG(model)
    example = torch.zeros(1, 3, 64, 64)  # not 32: its 1x1 pool5 map would specialise H, W to 32
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    silence = contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()
    with warnings.catch_warnings(), silence:
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), dynamo=True, external_data=False, verbose=False,
                                    input_names=[spec.INPUT_NAME], output_names=list(spec.OUTPUT_NAMES),
                                    dynamic_shapes={spec.INPUT_NAME: dims})
    proto = program.model_proto
    proto.graph.name = GRAPH_NAME
    proto.doc_string = "VGG16 with every conv activation and pool switch as outputs (Zeiler & Fergus deconvnet)."
    card = {"architecture": "VGG16", "head": model.head, "num_classes": model.num_classes,
            "batch_norm_folded": model.batch_norm, **(model_card or {})}
    del proto.metadata_props[:]
    for key, value in metadata(class_names, input_size, card).items():
        proto.metadata_props.add(key=key, value=value)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        onnx.save_model(proto, tmp)
        onnx.checker.check_model(str(tmp), full_check=True)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
        images = check_images if check_images is not None else check_inputs(input_size)
        report = compare(session, module, images, atol)
        report.update(path=str(path), bytes=tmp.stat().st_size,
                      opset=next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                      seconds=round(time.perf_counter() - start, 2))
        if report["failures"]:
            raise ExportCheckError("the exported graph disagrees with PyTorch:\n  " + "\n  ".join(report["failures"]),
                                   report)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return report
