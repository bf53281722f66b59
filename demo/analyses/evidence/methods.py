"""Class-evidence maps from the onnxruntime forward pass and the NumPy backward stage, one function per method.

Every method reads the same three things (``Network``): an onnxruntime session of the exported graph
(probabilities, conv activations, pool switches), the NumPy deconvnet on the same conv weights
(``demo.backward.deconvnet``) and the class-score head (``demo.backward.head``). No autograd: gradients are the
"gradient" rule of the backward stage (d logit / d input), so every method runs from an .onnx file alone. A
network made from a model (``Network.from_model``) projects class logits in one onnxruntime run instead, the
backward pass appended to the model's graph (``demo.backward.fused``; the same projections, about 1.3x faster for
one 112-px image on the CPU and as fast at 224 px, on the model's own provider, the GPU included); the NumPy stage
serves the rest.

- ``gradcam``: Grad-CAM (Selvaraju et al. 2017, arXiv 1610.02391) at any conv layer: channel weights = spatial
  mean of d logit / d a_layer (a the post-ReLU activation), ReLU of the weighted sum of the maps, upsampled
  bilinearly (half-pixel centres) to the input.
- ``guided-gradcam``: the upsampled Grad-CAM times the guided-backpropagation projection, as in the paper.
- ``gradient``: d logit / d input (Simonyan et al. 2014, arXiv 1312.6034); ``deconvnet`` and ``guided``: the class
  projection under those rules (Zeiler & Fergus 2014; Springenberg et al. 2015).
- ``gradient-x-input``: input times gradient (Shrikumar et al. 2016).
- ``smoothgrad``: the mean projection of n noisy copies, noise sd a fraction of the image's value range
  (Smilkov et al. 2017, arXiv 1706.03825), over any of the three rules, in batches.
- ``ig``: Integrated Gradients (Sundararajan et al. 2017, arXiv 1703.01365): black (zero pixels) or blurred
  baseline, m points on the straight path, trapezoid rule; ``completeness`` = sum of attributions minus
  (logit(x) - logit(baseline)).
- ``occlusion``: the drop of the class probability under a grey square (``demo.analyses.occlusion``), each
  position's drop painted on its grid cell.
- ``random`` (seeded uniform noise) and ``edges`` (Sobel magnitude of the image): baselines that know nothing of
  the network.

``attribute`` is the one entry point: method id, network, images (N, 3, H, W) normalised, class -> (N, H, W)
float32 maps, larger = more evidence. Pixel-space attributions (N, 3, H, W) become maps by the sum over channels
of their absolute values, except gradient x input and IG, whose signed sum keeps the sign of the evidence.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from base.spec import (
    ACTIVATION_OUTPUTS,
    CONV_LAYERS,
    HEAD_RELUS,
    INPUT_NAME,
    MEAN,
    OUTPUT_NAMES,
    POOL_LAYERS,
    PROBS_NAME,
    RULES,
    STD,
    layer_rules,
    switch_output,
)
from demo.analyses.occlusion import occlude, square_positions
from demo.backward import Deconvnet, Head, head_backward, head_forward
from demo.backward.fused import FusedClassProjection

METHODS = ("gradcam", "guided-gradcam", "gradient", "gradient-x-input", "smoothgrad", "ig", "deconvnet", "guided",
           "occlusion", "random", "edges")
BASELINES = ("black", "blurred")  # Integrated Gradients' starting image
BLUR_SIZE, BLUR_SIGMA = 11, 5.0  # the Gaussian of the blurred copies (RISE's insertion start, IG's baseline)
SIGNED = ("gradient-x-input", "ig")  # methods whose map is the signed sum over channels

Forward = tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]  # probs (N, K), activations, switches


@dataclass(frozen=True)
class Network:
    """What every method reads: an onnxruntime ``session`` of the exported graph, the NumPy deconvnet ``net`` on
    the same conv weights, the class-score ``head``, and the per-channel ``mean`` (3,) of the normalisation (for
    the black baseline; default ``base.spec``'s). A randomized copy of a model is a Network of its session, its
    deconvnet and its head: ``Network(session, Deconvnet(weights), head)``."""

    session: ort.InferenceSession
    net: Deconvnet
    head: Head
    mean: np.ndarray = field(default_factory=lambda: np.asarray(MEAN, np.float32))
    std: np.ndarray = field(default_factory=lambda: np.asarray(STD, np.float32))
    session_for: Callable[[Sequence[str]], ort.InferenceSession] | None = None  # OnnxModel.session_for
    fused: FusedClassProjection | None = None  # class projections in one run (``demo.backward.fused``), if any

    @classmethod
    def from_model(cls, model) -> Network:
        """The Network of an ``OnnxModel`` (kept while the model lives, so repeated calls are free)."""
        cached = _NETWORKS.get(model)
        if cached is None:
            cached = cls(model.session, Deconvnet(model.weights), model.head, np.asarray(model.mean, np.float32),
                         np.asarray(model.std, np.float32), getattr(model, "session_for", None),
                         FusedClassProjection.for_model(model))
            _NETWORKS[model] = cached
        return cached

    def forward(self, image: np.ndarray) -> Forward:
        """Probabilities (N, K), activations {conv: (N, C, h, w)} and switches {pool: (N, C, h/2, w/2)}."""
        values = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(image, np.float32)})
        out = dict(zip(OUTPUT_NAMES, values, strict=True))
        return (out[PROBS_NAME], {n: out[n] for n in ACTIVATION_OUTPUTS},
                {p: out[switch_output(p)] for p in POOL_LAYERS})

    def pruned(self, outputs: Sequence[str]) -> ort.InferenceSession:
        """A session that computes only ``outputs`` (the model's ``session_for``), else ``session``."""
        return self.session if self.session_for is None else self.session_for(outputs)

    def probs(self, image: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """Class probabilities (N, K) float32 of ``image`` (N, 3, H, W), ``batch_size`` images per run."""
        N = image.shape[0]
        session = self.pruned([PROBS_NAME])
        out = [session.run([PROBS_NAME], {INPUT_NAME: np.ascontiguousarray(image[a : a + batch_size], np.float32)})[0]
               for a in range(0, N, batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.head.num_classes), np.float32)


_NETWORKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def as_network(model) -> Network:
    """``model`` if it is a Network, else ``Network.from_model(model)`` (an ``OnnxModel``)."""
    return model if isinstance(model, Network) else Network.from_model(model)


# ----------------------------------------------------------------------------------------------------------------
# Building blocks


def _classes(class_index, N: int, K: int) -> np.ndarray:
    """One class for all images, or (N,) ints -> (N,) int64, checked against K classes."""
    classes = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (N,)).copy()
    if ((classes < 0) | (classes >= K)).any():
        raise ValueError(f"class must lie in 0..{K - 1}, got {class_index}")
    return classes


def class_projection(network: Network, image: np.ndarray, classes: np.ndarray, rule: str = "gradient",
                     batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Projections (B, 3, H, W) float32 of the logit of ``classes[b]`` (B,) for ``image`` (B, 3, H, W) under ``rule``,
    and the logits (B,); ``batch_size`` rows per forward and backward pass. With "gradient": d logit / d input.
    One onnxruntime run per batch when the network has the fused graph (``Network.fused``) and ``rule`` is one
    rule for every ReLU, else the forward run and the NumPy stage."""
    B = image.shape[0]
    images, logits = [], []
    fused = network.fused if isinstance(rule, str) else None
    for a in range(0, B, batch_size):
        chunk, targets = image[a : a + batch_size], classes[a : a + batch_size]
        if fused is not None:
            x, z = fused.project_class(chunk, targets, rule)
        else:
            _, acts, switches = network.forward(chunk)
            x, z = network.net.project_class(acts, switches, targets, rule=rule, head=network.head)
        images.append(x)
        logits.append(z)
    return np.concatenate(images), np.concatenate(logits)


def logits(network: Network, image: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Logits (N, K) float32 of ``image`` (N, 3, H, W), from conv5_3's activation and the NumPy head."""
    out = []
    for a in range(0, image.shape[0], batch_size):
        chunk = np.ascontiguousarray(image[a : a + batch_size], np.float32)
        feature = network.pruned([CONV_LAYERS[-1]]).run([CONV_LAYERS[-1]], {INPUT_NAME: chunk})[0]
        out.append(head_forward(network.head, feature).logits)
    return np.concatenate(out)


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (N, h, w) -> (N, H, W) float32 with half-pixel centres (PyTorch's ``align_corners=False``,
    OpenCV's ``resize``), written as two interpolation matrices."""
    N, h, w = maps.shape
    H, W = size
    return (_interpolation(H, h) @ np.asarray(maps, np.float32) @ _interpolation(W, w).T).astype(np.float32)


def _interpolation(out: int, size: int) -> np.ndarray:
    """(out, size) matrix of 1-D linear interpolation from ``size`` samples to ``out``, half-pixel centres."""
    src = np.maximum((np.arange(out) + 0.5) * size / out - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), size - 1)
    i1 = np.minimum(i0 + 1, size - 1)
    t = (src - i0).astype(np.float32)
    m = np.zeros((out, size), np.float32)
    np.add.at(m, (np.arange(out), i0), 1 - t)
    np.add.at(m, (np.arange(out), i1), t)
    return m


def gaussian_blur(image: np.ndarray, size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """``image`` (N, C, H, W) blurred by a normalised size x size Gaussian of ``sigma`` pixels, zero padding (zero =
    the mean colour of a normalised image), separable: (N, C, H, W) float32."""
    N, C, H, W = image.shape
    r = size // 2
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    x = np.pad(np.asarray(image, np.float32), ((0, 0), (0, 0), (r, r), (r, r)))
    x = sum(k[i] * x[:, :, i : i + H, :] for i in range(size))
    return sum(k[i] * x[:, :, :, i : i + W] for i in range(size)).astype(np.float32)


def reduce_channels(attribution: np.ndarray, signed: bool) -> np.ndarray:
    """(N, 3, H, W) -> (N, H, W) float32: the signed sum over channels, or the sum of absolute values."""
    a = np.asarray(attribution, np.float32)
    return a.sum(axis=1) if signed else np.abs(a).sum(axis=1)


# ----------------------------------------------------------------------------------------------------------------
# The methods


def layer_gradient(network: Network, image: np.ndarray, classes: np.ndarray,
                   layer: str = "conv5_3") -> tuple[np.ndarray, np.ndarray]:
    """d logit_c / d a_layer (N, C, h, w) and a_layer (N, C, h, w), a the post-ReLU activation of conv ``layer``:
    the head's backward pass, then the "gradient" descent stopped at ``layer``."""
    if layer not in CONV_LAYERS:
        raise ValueError(f"unknown layer {layer!r}; expected one of {', '.join(CONV_LAYERS)}")
    _, acts, switches = network.forward(image)
    head = network.head
    rules = layer_rules("gradient", (*CONV_LAYERS, *(HEAD_RELUS if head.kind == "torchvision" else ())))
    signal = head_backward(head, head_forward(head, acts[CONV_LAYERS[-1]]), classes, rules)
    if layer != CONV_LAYERS[-1]:
        signal = network.net.project_down(signal, CONV_LAYERS[-1], switches, rule="gradient", activations=acts,
                                          to_layer=layer)
    return signal, np.asarray(acts[layer], np.float32)


def gradcam_layer(network: Network, image: np.ndarray, classes: np.ndarray, layer: str = "conv5_3") -> np.ndarray:
    """Grad-CAM at the resolution of ``layer``: relu(sum_c mean_ij(d logit / d a_c) a_c), (N, h, w) float32."""
    grad, act = layer_gradient(network, image, classes, layer)
    weights = grad.mean(axis=(2, 3))  # (N, C)
    return np.maximum(np.einsum("nc,nchw->nhw", weights, act), 0).astype(np.float32)


def gradcam(network: Network, image: np.ndarray, classes: np.ndarray, layer: str = "conv5_3") -> np.ndarray:
    """Grad-CAM of ``layer`` upsampled to the input: (N, H, W) float32."""
    N, C, H, W = image.shape
    return upsample(gradcam_layer(network, image, classes, layer), (H, W))


def guided_gradcam(network: Network, image: np.ndarray, classes: np.ndarray, layer: str = "conv5_3",
                   batch_size: int = 16) -> np.ndarray:
    """Grad-CAM (upsampled) times the guided class projection: (N, 3, H, W) float32."""
    guided, _ = class_projection(network, image, classes, "guided", batch_size)
    return guided * gradcam(network, image, classes, layer)[:, None]


def gradient_x_input(network: Network, image: np.ndarray, classes: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Input times d logit / d input: (N, 3, H, W) float32."""
    grad, _ = class_projection(network, image, classes, "gradient", batch_size)
    return np.asarray(image, np.float32) * grad


def smoothgrad(network: Network, image: np.ndarray, classes: np.ndarray, samples: int = 25, sd: float = 0.15,
               rule: str = "gradient", seed: int = 0, noise: np.ndarray | None = None,
               batch_size: int = 16) -> np.ndarray:
    """SmoothGrad: the mean ``rule`` projection of ``samples`` noisy copies of each image: (N, 3, H, W) float32.

    The noise is Gaussian with standard deviation ``sd`` times each image's value range (max - min), drawn from
    ``seed``; ``noise`` (N, samples, 3, H, W) gives the perturbations themselves (absolute, added as they are).
    """
    N, C, H, W = image.shape
    check_samples(samples, sd)
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {', '.join(RULES)}")
    if noise is None:
        scale = (image.reshape(N, -1).max(axis=1) - image.reshape(N, -1).min(axis=1)) * sd  # (N,)
        draws = np.random.default_rng(seed).standard_normal((N, samples, C, H, W), dtype=np.float32)
        noise = draws * scale[:, None, None, None, None].astype(np.float32)
    noise = np.asarray(noise, np.float32)
    if noise.shape != (N, samples, C, H, W):
        raise ValueError(f"noise of shape {noise.shape}, expected {(N, samples, C, H, W)}")
    noisy = (image[:, None] + noise).reshape(N * samples, C, H, W)
    grads, _ = class_projection(network, noisy, np.repeat(classes, samples), rule, batch_size)
    return grads.reshape(N, samples, C, H, W).mean(axis=1)


def baseline_image(network: Network, image: np.ndarray, baseline: str = "black") -> np.ndarray:
    """IG's starting image for ``image`` (N, 3, H, W) normalised: "black" (zero pixels) or "blurred"."""
    if baseline == "black":
        black = -network.mean / network.std  # pixel value 0, normalised
        return np.broadcast_to(black.reshape(1, 3, 1, 1), image.shape).astype(np.float32)
    if baseline == "blurred":
        return gaussian_blur(image)
    raise ValueError(f"unknown baseline {baseline!r}; expected one of {', '.join(BASELINES)}")


def integrated_gradients(network: Network, image: np.ndarray, classes: np.ndarray, steps: int = 32,
                         baseline: str | np.ndarray = "black",
                         batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Integrated Gradients of the logit: attributions (N, 3, H, W) float32 and the completeness error (N,),
    sum(attributions) - (logit(x) - logit(baseline)).

    ``steps`` points alpha = 0, 1/(m-1), ..., 1 on the straight path from the baseline ("black", "blurred" or an
    (N, 3, H, W) array) to the image, weighed by the trapezoid rule; all points of an image go in batches.
    """
    N, C, H, W = image.shape
    if steps < 2:
        raise ValueError(f"Integrated Gradients needs at least 2 steps, got {steps}")
    base = baseline_image(network, image, baseline) if isinstance(baseline, str) else np.asarray(baseline, np.float32)
    alphas = np.linspace(0.0, 1.0, steps, dtype=np.float32)
    weights = np.full(steps, 1.0 / (steps - 1), np.float32)
    weights[[0, -1]] /= 2
    delta = np.asarray(image, np.float32) - base  # (N, C, H, W)
    path = (base[:, None] + alphas[None, :, None, None, None] * delta[:, None]).reshape(N * steps, C, H, W)
    grads, z = class_projection(network, path, np.repeat(classes, steps), "gradient", batch_size)
    grads = grads.reshape(N, steps, C, H, W)
    attribution = delta * np.einsum("s,nschw->nchw", weights, grads)
    z = z.reshape(N, steps)
    completeness = attribution.reshape(N, -1).sum(axis=1) - (z[:, -1] - z[:, 0])
    return attribution.astype(np.float32), completeness.astype(np.float32)


_OCCLUDED: dict[str, object] = {}  # the last image's occlusion probabilities, see ``occluded_probs``


def occluded_probs(network: Network, image: np.ndarray, size: int, stride: int,
                   batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """p(every class) of ``image`` (1, 3, H, W) as it is, (K,), and with the grey square over each grid cell,
    (nh, nw, K) float32. None of it depends on the class, so the last image's result is kept (keyed by the
    network's session and the image's bytes): mapping every class of one image costs one occlusion pass."""
    _, C, H, W = image.shape
    key = (hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest(), image.shape, size, stride)
    if _OCCLUDED.get("session") is network.session and _OCCLUDED.get("key") == key:
        return _OCCLUDED["base"], _OCCLUDED["grid"]  # type: ignore[return-value]
    tops, lefts = square_positions(H, W, size, stride)
    batch = np.concatenate([image] + [occlude(image, int(t), int(lf), size) for t in tops for lf in lefts])
    probs = network.probs(batch, batch_size)  # (1 + nh * nw, K)
    base, grid = probs[0], probs[1:].reshape(len(tops), len(lefts), -1)
    _OCCLUDED.update(session=network.session, key=key, base=base, grid=grid)
    return base, grid


def forget_occlusion() -> None:
    """Drop the kept occlusion probabilities (``occluded_probs``): the next occlusion map does its pass again."""
    _OCCLUDED.clear()


def occlusion(network: Network, image: np.ndarray, classes: np.ndarray, size: int | None = None,
              stride: int | None = None, batch_size: int = 16) -> np.ndarray:
    """The drop of p(class) when a grey square (the mean colour) covers each grid cell: (N, H, W) float32
    (``size`` default H/4 and ``stride`` default H/8 pixels, at least 1), as ``demo.analyses.occlusion``."""
    N, C, H, W = image.shape
    size = size or max(1, H // 4)
    stride = stride or max(1, H // 8)
    maps = np.empty((N, H, W), np.float32)
    for n in range(N):
        base, grid = occluded_probs(network, image[n : n + 1], size, stride, batch_size)
        drop = base[classes[n]] - grid[:, :, classes[n]]  # (nh, nw)
        maps[n] = np.repeat(np.repeat(drop, stride, axis=0), stride, axis=1)[:H, :W]
    return maps


def random_map(image: np.ndarray, seed: int = 0) -> np.ndarray:
    """Uniform noise (N, H, W) float32 from ``seed``: the baseline any map must beat."""
    N, C, H, W = image.shape
    return np.random.default_rng(seed).random((N, H, W), dtype=np.float32)


def edges(image: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of each channel, summed over channels: (N, H, W) float32 (edge padding)."""
    N, C, H, W = image.shape
    x = np.pad(np.asarray(image, np.float32), ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    s = lambda r, c: x[:, :, r : r + H, c : c + W]  # noqa: E731  (the shifted view at offset (r - 1, c - 1))
    gx = (s(0, 2) + 2 * s(1, 2) + s(2, 2)) - (s(0, 0) + 2 * s(1, 0) + s(2, 0))
    gy = (s(2, 0) + 2 * s(2, 1) + s(2, 2)) - (s(0, 0) + 2 * s(0, 1) + s(0, 2))
    return np.sqrt(gx**2 + gy**2).sum(axis=1).astype(np.float32)


def check_samples(samples: int, sd: float) -> None:
    """ValueError unless ``samples`` >= 1 and 0 < ``sd`` <= 1."""
    if int(samples) != samples or samples < 1:
        raise ValueError(f"the number of samples must be a positive integer, got {samples}")
    if not 0 < sd <= 1:
        raise ValueError(f"the noise sd is a fraction of the value range in (0, 1], got {sd}")


# ----------------------------------------------------------------------------------------------------------------
# The registry


def attribute(method: str, model, image: np.ndarray, class_index: int | np.ndarray, *, layer: str = "conv5_3",
              rule: str = "gradient", samples: int = 25, sd: float = 0.15, steps: int = 32,
              baseline: str = "black", seed: int = 0, batch_size: int = 16,
              info: dict | None = None) -> np.ndarray:
    """The evidence map of ``method`` (one of ``METHODS``) for class ``class_index`` (one int, or (N,) ints):
    (N, H, W) float32, larger = more evidence for the class.

    ``model``: a ``Network`` (e.g. a randomized copy) or an ``OnnxModel``; ``image`` (N, 3, H, W) float32,
    normalised. Options: ``layer`` (Grad-CAM's conv layer), ``rule`` (SmoothGrad's backward rule),
    ``samples`` and ``sd`` (SmoothGrad's copies and noise sd as a fraction of the value range), ``steps`` and
    ``baseline`` (IG), ``seed`` (SmoothGrad's noise, the random map), ``batch_size`` (images per pass).
    ``info``, when given, receives extras: "completeness" (N,) for IG, "attribution" (N, 3, H, W) for the
    pixel-space methods.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if layer not in CONV_LAYERS:
        raise ValueError(f"unknown layer {layer!r}; expected one of {', '.join(CONV_LAYERS)}")
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {', '.join(RULES)}")
    if batch_size < 1:
        raise ValueError(f"the batch size must be at least 1, got {batch_size}")
    image = np.asarray(image, np.float32)
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"expected images (N, 3, H, W), got shape {image.shape}")
    network = as_network(model)
    classes = _classes(class_index, image.shape[0], network.head.num_classes)
    if method == "random":
        return random_map(image, seed)
    if method == "edges":
        return edges(image)
    if method == "gradcam":
        return gradcam(network, image, classes, layer)
    if method == "occlusion":
        return occlusion(network, image, classes, batch_size=batch_size)
    pixel: Mapping[str, Callable[[], np.ndarray]] = {
        "guided-gradcam": lambda: guided_gradcam(network, image, classes, layer, batch_size),
        "gradient": lambda: class_projection(network, image, classes, "gradient", batch_size)[0],
        "deconvnet": lambda: class_projection(network, image, classes, "deconvnet", batch_size)[0],
        "guided": lambda: class_projection(network, image, classes, "guided", batch_size)[0],
        "gradient-x-input": lambda: gradient_x_input(network, image, classes, batch_size),
        "smoothgrad": lambda: smoothgrad(network, image, classes, samples, sd, rule, seed, None, batch_size),
    }
    if method == "ig":
        if int(steps) != steps or steps < 2:
            raise ValueError(f"the number of IG steps must be an integer >= 2, got {steps}")
        attribution, completeness = integrated_gradients(network, image, classes, steps, baseline, batch_size)
        if info is not None:
            info["completeness"] = completeness
    else:
        attribution = pixel[method]()
    if info is not None:
        info["attribution"] = attribution
    return reduce_channels(attribution, signed=method in SIGNED)
