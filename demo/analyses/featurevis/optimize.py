"""The optimisation loop: Adam on the Fourier parameters, one random transformation per step, the forward pass in
onnxruntime and the gradient back to the parameters in NumPy; several targets (and copies of one target, for the
diversity term) in one batch per step.

One step for a batch of B rows (``step``): parameters (B, 2, 3, P, P/2 + 1) -> RGB (``param.FourierImage``) ->
random transformation (``transforms.Transform``) -> normalisation -> ``OnnxModel.run`` (activations, switches) ->
objective values and their signal at the start layer (``objective.objective``, plus the diversity term) -> the
NumPy gradient stage (``Deconvnet.project_down`` with the "gradient" rule, the start layer's ReLU passed) -> the
adjoints of the normalisation, the transformation and the parametrization. Adam (Kingma & Ba 2015; lr 0.05,
betas 0.9, 0.999, eps 1e-8, Lucid's optimiser) then ascends the objective.

Every row draws its starting spectrum and its transformations from its own random stream (seeded by the seed, the
target and the copy), so a target's picture does not depend on which other targets share its batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from base.spec import CONV_LAYERS, INPUT_NAME, steps_down, switch_output
from demo.analyses.featurevis import transforms
from demo.analyses.featurevis.objective import CLASS, Target, diversity, objective
from demo.analyses.featurevis.param import DECAY_POWER, SD, FourierImage, init_spectrum
from demo.backward.deconvnet import Deconvnet
from demo.onnx_forward import OnnxModel, conv_biases

LR = 0.05
BETAS = (0.9, 0.999)
EPS = 1e-8
FLAT_RANGE = 0.02  # a picture whose pixel values span less than this (of 1) counts as flat


@dataclass
class Settings:
    """How each picture is made: ``steps`` of Adam at ``lr`` on (size x size) images, ``copies`` pictures per
    target with the diversity term weighted by ``diversity_weight``; ``seed`` names every random stream."""

    steps: int = 512
    size: int = 112
    lr: float = LR
    seed: int = 0
    copies: int = 1
    diversity_weight: float = 100.0
    sd: float = SD
    decay_power: float = DECAY_POWER

    def check(self) -> None:
        """ValueError on a setting that cannot work."""
        if self.steps < 1:
            raise ValueError(f"the number of steps must be at least 1, got {self.steps}")
        if self.size < 16 or self.size % 16:
            raise ValueError(f"the image size must be a positive multiple of 16, got {self.size}")
        if self.lr <= 0:
            raise ValueError(f"the learning rate must be positive, got {self.lr}")
        if self.copies < 1:
            raise ValueError(f"the number of pictures per target must be at least 1, got {self.copies}")
        if self.seed < 0:
            raise ValueError(f"the seed must be at least 0, got {self.seed}")


@dataclass
class Timings:
    """Seconds spent in each part of the steps."""

    forward: float = 0.0  # onnxruntime
    backward: float = 0.0  # objective, NumPy gradient stage
    transforms: float = 0.0  # parametrization and transformations, both ways, and Adam

    def as_dict(self) -> dict[str, float]:
        return {"forward": self.forward, "backward": self.backward, "transforms": self.transforms}


@dataclass
class Result:
    """One target's outcome: its pictures (copies, 3, P, P) float32 RGB in [0, 1], the objective at the first and
    the last step (the copies' mean, on transformed images) and on the final untransformed pictures, and whether
    the pictures came back flat."""

    target: Target
    images: np.ndarray
    first: float
    last: float
    final: float
    flat: bool
    seeds: list[list[int]] = field(default_factory=list)


class Visualizer:
    """The model's parts the steps need: the onnxruntime model, the NumPy gradient stage, the conv biases."""

    def __init__(self, model: OnnxModel, biases: Mapping[str, np.ndarray]) -> None:
        self.model = model
        self.biases = biases
        self.net = Deconvnet(model.weights)
        self.head = model.head
        self.mean = model.mean.reshape(1, 3, 1, 1).astype(np.float32)
        self.std = model.std.reshape(1, 3, 1, 1).astype(np.float32)
        self.timings = Timings()

    def forward(self, start: str, x: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The activations {conv: (B, C, h, w)} of conv ``start`` and every conv below it and the switches
        {pool: (B, C, h/2, w/2)} of the pools below it, for the normalised input x (B, 3, H, W): all a step from
        ``start`` reads, from a session of the graph pruned to them (the layers above are not computed)."""
        steps = steps_down(start)
        names = [*(s.name for s in steps), *(switch_output(s.pool) for s in steps if s.pool)]
        values = self.model.session_for(names).run(None, {INPUT_NAME: np.ascontiguousarray(x, np.float32)})
        out = dict(zip(names, values, strict=True))
        return ({s.name: out[s.name] for s in steps}, {s.pool: out[switch_output(s.pool)] for s in steps if s.pool})

    def evaluate(self, targets: Sequence[Target], rgb: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Objective values (B,) of RGB images (B, 3, P, P) in [0, 1], untransformed, and the activations up to the
        targets' start layer."""
        x = (rgb - self.mean) / self.std
        acts, _ = self.forward(targets[0].start, x)
        return objective(targets, x, acts, self.model.weights, self.biases, self.head)[0], acts

    def gradient(self, targets: Sequence[Target], x: np.ndarray, groups: Sequence[Sequence[int]] = (),
                 diversity_weight: float = 0.0) -> tuple[np.ndarray, float, np.ndarray]:
        """Objective values (B,), the diversity term, and d (sum of values - weight * diversity) / d x (B, 3, H, W),
        x the normalised network input (B, 3, H, W) float32."""
        start = targets[0].start
        t0 = time.perf_counter()
        acts, switches = self.forward(start, x)
        t1 = time.perf_counter()
        values, signal = objective(targets, x, acts, self.model.weights, self.biases, self.head)
        div = 0.0
        if diversity_weight and any(len(g) > 1 for g in groups):
            div, d_div = diversity(acts[start], groups)
            signal -= np.float32(diversity_weight) * d_div * (acts[start] > 0)
        passed = dict(acts)
        passed[start] = np.ones_like(acts[start])  # the start layer's ReLU is passed: the objective is pre-ReLU
        grad = self.net.project_down(signal, start, switches, rule="gradient", activations=passed)
        self.timings.forward += t1 - t0
        self.timings.backward += time.perf_counter() - t1
        return values, div, grad


def row_streams(targets: Sequence[Target], seed: int, copies: int) -> tuple[list[Target], list[list[int]]]:
    """The rows of a batch (each target ``copies`` times, copies adjacent) and each row's random-stream seed."""
    rows, seeds = [], []
    for t in targets:
        for c in range(copies):
            rows.append(t)
            seeds.append([seed, t.seed_key(), c])
    return rows, seeds


def step(vis: Visualizer, rows: Sequence[Target], spectrum: np.ndarray, params: transforms.Params,
         fourier: FourierImage, groups: Sequence[Sequence[int]] = (),
         diversity_weight: float = 0.0) -> tuple[np.ndarray, float, np.ndarray]:
    """One step's objective values (B,), diversity term and gradient d objective / d spectrum (B, 2, 3, P, P/2+1),
    with the transformation ``params``."""
    t0 = time.perf_counter()
    rgb, cache = fourier.forward(spectrum)
    transform = transforms.Transform(params, fourier.size)
    x = (transform(rgb) - vis.mean) / vis.std
    vis.timings.transforms += time.perf_counter() - t0
    values, div, grad = vis.gradient(rows, x, groups, diversity_weight)
    t1 = time.perf_counter()
    grad = fourier.backward(transform.adjoint(grad / vis.std), cache)
    vis.timings.transforms += time.perf_counter() - t1
    return values, div, grad


class Adam:
    """Adam ascending an objective (Kingma & Ba 2015), elementwise on one array of parameters."""

    def __init__(self, shape: tuple[int, ...], lr: float = LR, betas: tuple[float, float] = BETAS,
                 eps: float = EPS) -> None:
        self.lr, self.betas, self.eps, self.t = lr, betas, eps, 0
        self.m = np.zeros(shape, dtype=np.float32)
        self.v = np.zeros(shape, dtype=np.float32)

    def ascend(self, params: np.ndarray, grad: np.ndarray) -> None:
        """params += the step for gradient ``grad`` of the objective (in place)."""
        b1, b2 = self.betas
        self.t += 1
        self.m *= b1
        self.m += (1 - b1) * grad
        self.v *= b2
        self.v += (1 - b2) * grad * grad
        m_hat = self.m / (1 - b1**self.t)
        v_hat = self.v / (1 - b2**self.t)
        params += (self.lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(np.float32)


def visualize(vis: Visualizer, targets: Sequence[Target], settings: Settings,
              progress: Callable[[int], object] | None = None) -> list[Result]:
    """Optimise one batch of ``targets`` (all starting from the same layer) together; ``progress(1)`` after each
    step. Returns one Result per target, in order."""
    settings.check()
    rows, seeds = row_streams(targets, settings.seed, settings.copies)
    rngs = [np.random.default_rng(s) for s in seeds]
    fourier = FourierImage(settings.size, settings.decay_power)
    spectrum = np.concatenate([init_spectrum(r, 1, settings.size, settings.sd) for r in rngs])
    adam = Adam(spectrum.shape, settings.lr)
    n = settings.copies
    groups = [list(range(i * n, (i + 1) * n)) for i in range(len(targets))]
    first = last = None
    for _ in range(settings.steps):
        drawn = [transforms.draw(r, 1) for r in rngs]
        params = transforms.Params(*(np.concatenate([getattr(d, f) for d in drawn])
                                     for f in ("jitter1", "scale", "angle", "jitter2")))
        values, _, grad = step(vis, rows, spectrum, params, fourier, groups, settings.diversity_weight)
        t0 = time.perf_counter()
        adam.ascend(spectrum, grad)
        vis.timings.transforms += time.perf_counter() - t0
        first = values if first is None else first
        last = values
        if progress is not None:
            progress(1)
    rgb, _ = fourier.forward(spectrum)
    final, _ = vis.evaluate(rows, rgb)
    results = []
    for i, t in enumerate(targets):
        sl = slice(i * n, (i + 1) * n)
        images = rgb[sl]
        span = float((images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3))).min())
        results.append(Result(t, images, float(first[sl].mean()), float(last[sl].mean()), float(final[sl].mean()),
                              span < FLAT_RANGE, seeds[sl]))
    return results


def batches(targets: Sequence[Target], batch: int) -> list[list[Target]]:
    """``targets`` in batches of at most ``batch`` that share a start layer (class targets with conv5_3), in order."""
    out: list[list[Target]] = []
    for t in targets:
        if out and len(out[-1]) < batch and out[-1][0].start == t.start:
            out[-1].append(t)
        else:
            out.append([t])
    return out


def load(model_path: str | None, device: str = "auto", threads: int | None = None, randomize: str | None = None,
         randomize_seed: int = 0, tf32: bool = False) -> Visualizer:
    """The Visualizer of a model file, its ``randomize`` layers re-drawn (``demo.analyses.sanity.randomize``)."""
    model = OnnxModel(model_path, device=device, threads=threads, allow_tf32=tf32)
    biases = conv_biases(str(model.path))
    if randomize:
        from demo.analyses.sanity.randomize import ORDER, Randomizer

        layers = [t.strip() for t in randomize.split(",") if t.strip()]
        unknown = [name for name in layers if name not in ORDER]
        if unknown or not layers:
            raise ValueError(f"--randomize: unknown layer(s) {unknown or randomize!r}; expected names from "
                             f"{', '.join(ORDER)}")
        randomizer = Randomizer(model, randomize_seed)
        model = randomizer.model_for(layers)
        biases = {n: randomizer.draws(n)[0][1] if n in layers else biases[n] for n in CONV_LAYERS}
    return Visualizer(model, biases)


__all__ = ["CLASS", "Adam", "Result", "Settings", "Timings", "Visualizer", "batches", "load", "row_streams", "step",
           "visualize"]
