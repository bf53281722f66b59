"""The measurements of the sanity checks: what is projected (``Target``), the projections, the similarity of two
maps, the cascading and independent runs over randomized models, the class sensitivity, and the result
dataclasses. The semantics are those of ``demo.analyses.sanity``."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from base.cli import parse_class
from base.spec import CONV_LAYERS, HEAD_RELUS, RULES, SIZE_MULTIPLE, conv_channels, layer_rules
from demo.analyses.figures import class_name
from demo.analyses.sanity.randomize import HEAD, ORDER, Forward, Randomizer, check_randomized, run_session
from demo.backward import Deconvnet, Head, head_backward, head_forward
from demo.onnx_forward import OnnxModel

MODES = ("cascading", "independent", "both")
METRICS = ("spearman_abs", "spearman", "ssim")
TIMED = ("weights", "forward", "projection", "similarity", "classes")  # the kinds of work in SanityResult.timings

Scores = tuple[float, float, float]  # spearman_abs, spearman, ssim


def cascading_steps() -> list[tuple[str, ...]]:
    """The randomized layers of each cascading step: (), (head,), (head, conv5_3), ..., all 14."""
    return [ORDER[:k] for k in range(len(ORDER) + 1)]


def independent_steps() -> list[tuple[str, ...]]:
    """The randomized layers of each independent step: (), (head,), (conv5_3,), ..., (conv1_1,)."""
    return [(), *((name,) for name in ORDER)]


# ----------------------------------------------------------------------------------------------------------------
# Targets, projections, similarity


@dataclass(frozen=True)
class Target:
    """What is projected: a whole conv layer ("layer"), one channel's strongest activation ("unit"), or a class
    logit ("class"; ``class_index`` None: the trained model's top-1 class)."""

    kind: str
    layer: str  # the conv layer the projection starts from (conv5_3 for a class)
    channel: int | None = None
    class_index: int | None = None

    def depends_on(self, layer: str) -> bool:
        """Whether re-drawing ``layer`` (a conv name or "head") can change this target's projection: the class
        depends on every layer; a conv target only on the convs at and below its layer."""
        if self.kind == "class":
            return True
        return layer != HEAD and CONV_LAYERS.index(layer) <= CONV_LAYERS.index(self.layer)

    def describe(self, class_names: Sequence[str] | None = None) -> str:
        if self.kind == "layer":
            return f"{self.layer} (whole layer)"
        if self.kind == "unit":
            return f"{self.layer} channel {self.channel} (strongest activation)"
        return f"the {class_name(class_names, self.class_index)} logit" if self.class_index is not None \
            else "the top-1 class logit"


def parse_target(text: str, class_names: Sequence[str]) -> Target:
    """"conv5_3" | "conv5_3/85" | "class" | "class/3" | "class/Bengal" -> a Target (ValueError on anything else)."""
    head, sep, tail = text.strip().partition("/")
    if head == "class":
        if not tail:
            return Target("class", CONV_LAYERS[-1])
        return Target("class", CONV_LAYERS[-1], class_index=parse_class(tail, class_names))
    if head not in CONV_LAYERS:
        raise ValueError(f"unknown target {text!r}; expected a conv layer (e.g. conv5_3), LAYER/CHANNEL "
                         "(e.g. conv5_3/85), class or class/CLASS")
    if not sep:
        return Target("layer", head)
    channels = conv_channels(head)
    if not tail.isdigit() or not 0 <= int(tail) < channels:
        raise ValueError(f"target {text!r}: {head} has channels 0..{channels - 1}")
    return Target("unit", head, channel=int(tail))


def class_projections(net: Deconvnet, head: Head, activations: Mapping[str, np.ndarray],
                      switches: Mapping[str, np.ndarray], classes: Sequence[int] | np.ndarray,
                      rule: str) -> np.ndarray:
    """The class projections of one image for several classes in one batched pass: (K', 3, H, W) float32, row i
    that of class ``classes[i]``, each what ``Deconvnet.project_class`` gives (activations (1, C, h, w))."""
    classes = np.asarray(classes, dtype=np.int64)
    feature = np.asarray(activations[CONV_LAYERS[-1]], dtype=np.float32)
    relus = (*CONV_LAYERS, *(HEAD_RELUS if head.kind == "torchvision" else ()))
    rules = layer_rules(rule, relus)
    forward = head_forward(head, np.repeat(feature, classes.size, axis=0))
    signal = head_backward(head, forward, classes, rules)  # (K', 512, h, w) at conv5_3's output
    return net.project_down(signal, CONV_LAYERS[-1], switches, image_of=np.zeros(classes.size, np.int64),
                            rule={n: rules[n] for n in CONV_LAYERS}, activations=activations)


def project_target(net: Deconvnet, head: Head, forward: Forward, target: Target, class_index: int,
                   rule: str) -> np.ndarray:
    """The projection (3, H, W) float32 of ``target`` for one image's forward pass (probs, activations, switches);
    ``class_index``: the class of a class target."""
    _, acts, switches = forward
    if target.kind == "class":
        return net.project_class(acts, switches, class_index, rule=rule, head=head)[0][0]
    mode = "layer" if target.kind == "layer" else "channel"
    return net.project(acts, switches, target.layer, mode, channel=target.channel, rule=rule).images[0]


def ssim_map(projection: np.ndarray) -> np.ndarray:
    """What SSIM compares: sum over the 3 channels of |projection| (3, H, W), divided by its maximum -> (H, W)
    float64 in [0, 1] (all zero stays zero)."""
    m = np.abs(np.asarray(projection, dtype=np.float64)).sum(axis=0)
    peak = m.max()
    return m / peak if peak > 0 else m


def similarity(reference: np.ndarray, other: np.ndarray) -> Scores:
    """(spearman_abs, spearman, ssim) of two maps (3, H, W), as ``demo.analyses.sanity`` says: Spearman (scipy) of
    the absolute and of the signed values, SSIM (skimage) of ``ssim_map``. Identical maps give exactly 1; constant
    ones NaN ranks."""
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    p = np.asarray(reference, dtype=np.float64)
    q = np.asarray(other, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 3:
        raise ValueError(f"maps of shapes {p.shape} and {q.shape}: expected two (3, H, W)")
    identical = np.array_equal(p, q)

    def rank(a: np.ndarray, b: np.ndarray) -> float:
        if a.min() == a.max() or b.min() == b.max():
            return math.nan
        return 1.0 if identical else float(spearmanr(a.ravel(), b.ravel()).statistic)

    ssim = 1.0 if identical else float(structural_similarity(ssim_map(p), ssim_map(q), data_range=1.0))
    return rank(np.abs(p), np.abs(q)), rank(p, q), ssim


# ----------------------------------------------------------------------------------------------------------------
# The checks


@dataclass
class Step:
    """One randomization step: which layers were re-drawn, the maps and their similarity to the trained ones."""

    mode: str  # "cascading" or "independent"
    step: int  # 0: the trained model
    randomized: tuple[str, ...]  # the re-drawn layers, top down
    maps: dict[str, np.ndarray]  # rule -> (3, H, W) float32
    scores: dict[str, Scores]  # rule -> (spearman_abs, spearman, ssim) against step 0's map
    reused: bool  # no re-drawn layer can change the target: step 0's maps, no forward pass

    @property
    def label(self) -> str:
        """The randomized layers joined by "+" ("head+conv5_3"), "none" at step 0."""
        return "+".join(self.randomized) or "none"


@dataclass
class ClassSensitivity:
    """The class projections of the trained model compared with the top-1 class's, per rule."""

    top: int  # the trained model's top-1 class
    scores: dict[str, np.ndarray]  # rule -> (K, 3) similarity of class k's map to the top class's (row ``top`` = 1)

    def mean(self, rule: str, metric: str = "spearman_abs") -> float:
        """Mean over the classes other than the top one (NaN-aware)."""
        s = np.delete(self.scores[rule][:, METRICS.index(metric)], self.top)
        return float(np.nanmean(s)) if s.size and not np.isnan(s).all() else math.nan


@dataclass
class SanityResult:
    """Everything the checks found for one image and target."""

    target: Target
    class_index: int  # the trained model's top-1 class; a class target's class
    rules: tuple[str, ...]
    seed: int
    probs: np.ndarray  # (K,) trained probabilities
    cascading: list[Step] = field(default_factory=list)
    independent: list[Step] = field(default_factory=list)
    classes: ClassSensitivity | None = None
    # seconds: weights (draws, transposed-conv layouts), forward (sessions, runs), projection, similarity, classes
    timings: dict[str, float] = field(default_factory=dict)

    def steps(self, mode: str) -> list[Step]:
        return self.cascading if mode == "cascading" else self.independent

    @property
    def modes(self) -> list[str]:
        return [m for m in ("cascading", "independent") if self.steps(m)]


def parse_rules(rules: str | Sequence[str]) -> tuple[str, ...]:
    """Backward rule names, comma-separated or a sequence -> a tuple without repeats, in order; ValueError on a name
    not in ``base.spec.RULES`` or none at all."""
    names = [r.strip() for r in (rules.split(",") if isinstance(rules, str) else rules) if r.strip()]
    bad = [r for r in names if r not in RULES]
    if bad or not names:
        raise ValueError(f"unknown rule(s) {bad or rules!r}; expected names from {', '.join(RULES)}")
    return tuple(dict.fromkeys(names))


def class_sensitivity(net: Deconvnet, head: Head, forward: Forward, rules: Sequence[str] = RULES,
                      top: int | None = None) -> ClassSensitivity:
    """The class-sensitivity check on one image's forward pass (probs (1, K), activations, switches): per rule, the
    ``similarity`` of every class's projection to that of ``top`` (default: the most probable class)."""
    probs, acts, switches = forward
    K = probs.shape[1]
    top = int(probs[0].argmax()) if top is None else top
    scores = {}
    for rule in rules:
        maps = class_projections(net, head, acts, switches, np.arange(K), rule)  # (K, 3, H, W)
        scores[rule] = np.array([similarity(maps[top], maps[k]) for k in range(K)], dtype=np.float64)
    return ClassSensitivity(top, scores)


class _Timer:
    """Seconds spent per kind of work (``TIMED``), summed over the calls made through it."""

    def __init__(self) -> None:
        self.timings = dict.fromkeys(TIMED, 0.0)

    def __call__(self, kind: str, fn: Callable, *args):
        start = time.perf_counter()
        out = fn(*args)
        self.timings[kind] += time.perf_counter() - start
        return out


def _check_input(image: np.ndarray, mode: str) -> None:
    """ValueError unless ``mode`` is one of ``MODES`` and ``image`` is one image (1, 3, H, W) of a valid size."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if image.ndim != 4 or image.shape[:2] != (1, 3) or image.shape[2] % SIZE_MULTIPLE or image.shape[3] % SIZE_MULTIPLE:
        raise ValueError(f"expected one image (1, 3, H, W), H and W multiples of {SIZE_MULTIPLE}, got shape "
                         f"{image.shape}")


def _randomized_maps(rand: Randomizer, image: np.ndarray, base: Forward, target: Target, class_index: int,
                     rules: Sequence[str], key: tuple[str, ...], timed: _Timer) -> dict[str, np.ndarray]:
    """The maps (rule -> (3, H, W) float32) of the step that re-draws the layers ``key``: its own forward pass of
    ``image`` (1, 3, H, W) and deconvnet. RuntimeError when the forward pass did not compute a randomized layer
    with its drawn weights (``check_randomized``, layer by layer, against the trained pass ``base``)."""
    for layer in key:
        timed("weights", rand.draws, layer)  # cached for the session and the deconvnet below
    session = timed("forward", rand.session, key)
    forward = timed("forward", run_session, session, image)
    del session
    check_randomized(rand, key, image, forward, base)
    net = timed("weights", rand.deconvnet, key)
    head = rand.head(key)
    return {rule: timed("projection", project_target, net, head, forward, target, class_index, rule)
            for rule in rules}


def sanity_checks(model: OnnxModel, image: np.ndarray, target: str | Target = "conv5_3",
                  rules: str | Sequence[str] = RULES, mode: str = "cascading", seed: int = 0, classes: bool = True,
                  progress: Callable[[int, int], None] | None = None, bar: bool = True) -> SanityResult:
    """Run the randomization checks (``mode``: cascading, independent or both) and, with ``classes``, the class
    sensitivity, for ``image`` (1, 3, H, W) normalised and each of ``rules``; see ``demo.analyses.sanity`` for the
    semantics.

    One forward pass per step that needs one (all rules share it; identical steps of the two modes are computed
    once); the trained forward pass and maps are computed once. ``progress(done, total)`` is called after each.
    """
    _check_input(image, mode)
    rules = parse_rules(rules)
    target = parse_target(target, model.class_names) if isinstance(target, str) else target
    timed = _Timer()
    plans = {"cascading": cascading_steps(), "independent": independent_steps()}
    wanted = [m for m in ("cascading", "independent") if mode in (m, "both")]
    keys = list(dict.fromkeys(k for m in wanted for k in plans[m] if k))
    total = len(keys) + 1 + bool(classes)
    done = 0
    rand = Randomizer(model, seed)
    with tqdm(total=total, unit="step", desc="randomizing", disable=not bar, file=sys.stderr) as pbar:

        def tick() -> None:
            nonlocal done
            done += 1
            pbar.update(1)
            if progress is not None:
                progress(done, total)

        base_session = timed("forward", rand.session, ())
        base = timed("forward", run_session, base_session, image)
        del base_session
        top = int(base[0][0].argmax())
        class_index = top if target.class_index is None else target.class_index
        if target.kind == "class" and not 0 <= class_index < base[0].shape[1]:
            raise ValueError(f"the model has classes 0..{base[0].shape[1] - 1}, got {class_index}")
        trained_net = timed("weights", rand.deconvnet, ())
        trained = {rule: timed("projection", project_target, trained_net, model.head, base, target, class_index, rule)
                   for rule in rules}
        tick()

        computed: dict[tuple[str, ...], tuple[dict[str, np.ndarray], bool]] = {(): (trained, True)}
        for key in keys:
            if not any(target.depends_on(layer) for layer in key):
                computed[key] = (trained, True)  # exact: see demo.analyses.sanity, "An exact shortcut"
            else:
                computed[key] = (_randomized_maps(rand, image, base, target, class_index, rules, key, timed), False)
            tick()

        result = SanityResult(target, class_index, rules, seed, base[0][0].astype(np.float32))
        for m in wanted:
            for step, key in enumerate(plans[m]):
                maps, reused = computed[key]
                scores = {rule: timed("similarity", similarity, trained[rule], maps[rule]) for rule in rules}
                result.steps(m).append(Step(m, step, key, maps, scores, reused and bool(key)))

        if classes:
            result.classes = timed("classes", class_sensitivity, trained_net, model.head, base, rules)
            tick()
    result.timings = timed.timings
    return result
