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
from demo.analyses.evidence.methods import Network, attribute
from demo.analyses.figures import class_name
from demo.analyses.sanity.randomize import HEAD, ORDER, Forward, Randomizer, check_randomized
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


# ----------------------------------------------------------------------------------------------------------------
# Methods: anything that maps (a model under test, an image, a target) to a map


class Subject:
    """One model under test and one image: what a method reads. ``model`` is an ``OnnxModel`` (``run``,
    ``weights``, ``head``, ``class_names``): the trained one, a randomized copy (``Randomizer.model_for``) or
    another file; ``forward`` its forward pass of ``image`` (probs (1, K), activations, switches), computed once;
    ``deconvnet`` the NumPy backward stage on ``model.weights``, built on first use."""

    def __init__(self, model: OnnxModel, image: np.ndarray, forward: Forward | None = None,
                 deconvnet: Deconvnet | Callable[[], Deconvnet] | None = None) -> None:
        self.model, self.image = model, image
        self._forward = forward
        self._deconvnet = deconvnet

    @property
    def forward(self) -> Forward:
        if self._forward is None:
            self._forward = self.model.run(self.image)
        return self._forward

    @property
    def deconvnet(self) -> Deconvnet:
        if self._deconvnet is None:
            self._deconvnet = Deconvnet(self.model.weights)
        elif callable(self._deconvnet) and not isinstance(self._deconvnet, Deconvnet):
            self._deconvnet = self._deconvnet()
        return self._deconvnet

    @property
    def top(self) -> int:
        """The most probable class of ``image`` under ``model``."""
        return int(self.forward[0][0].argmax())


MethodFn = Callable[[Subject, np.ndarray, Target], np.ndarray]  # (subject, image (1, 3, H, W), target) -> map
ClassesFn = Callable[[Subject, np.ndarray, Sequence[int]], np.ndarray]  # -> (K', C, H, W), one map per class


@dataclass(frozen=True)
class SanityMethod:
    """A saliency method as the checks see it: ``fn(subject, image, target)`` -> the map (C, H, W) or (H, W) of
    ``target`` (a class target always carries its class index) for ``image`` under ``subject.model``.

    ``layer_targets``: it also maps conv targets ("conv5_3", "conv5_3/85"), and such a map reads only the layers
    at and below the target (true of the backward rules; it lets the checks reuse the trained maps, exactly, for
    steps that re-draw only layers above). ``classes``: an optional batched form for the class check (maps of
    several classes at once); without it the check calls ``fn`` once per class."""

    name: str
    fn: MethodFn
    layer_targets: bool = False
    classes: ClassesFn | None = None
    description: str = ""


def rule_method(rule: str) -> SanityMethod:
    """The projection under backward rule ``rule`` (``base.spec.RULES``) as a method: conv and class targets, the
    class check batched (``class_projections``)."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {', '.join(RULES)}")

    def fn(subject: Subject, image: np.ndarray, target: Target) -> np.ndarray:
        class_index = subject.top if target.class_index is None else target.class_index
        return project_target(subject.deconvnet, subject.model.head, subject.forward, target, class_index, rule)

    def classes(subject: Subject, image: np.ndarray, indices: Sequence[int]) -> np.ndarray:
        _, acts, switches = subject.forward
        return class_projections(subject.deconvnet, subject.model.head, acts, switches, indices, rule)

    return SanityMethod(rule, fn, layer_targets=True, classes=classes,
                        description=f"the class or layer projection under the {rule} rule")


EVIDENCE = ("gradcam", "guided-gradcam", "gradient-x-input", "smoothgrad", "ig", "occlusion", "random", "edges")


def evidence_method(name: str, **options) -> SanityMethod:
    """Method ``name`` of the evidence registry (``demo.analyses.evidence.attribute``; one of ``EVIDENCE``) as a
    method of the checks: the (H, W) map of a class target, computed on the model under test (its session, its
    NumPy deconvnet and its head, so a randomized copy's own weights), class targets only. ``options`` go to
    ``attribute`` (e.g. ``samples=4`` for SmoothGrad, ``steps=8`` for IG). The class check calls it once per class,
    so SmoothGrad's noise and the random map's draw are the same for every class and every step: only the class
    or the weights differ. The ``random`` and ``edges`` baselines read no weights: they are the maps that must
    fail both checks (similarity 1 at every step and for every class)."""
    if name not in EVIDENCE:
        raise ValueError(f"unknown evidence method {name!r}; expected one of {', '.join(EVIDENCE)}")

    def fn(subject: Subject, image: np.ndarray, target: Target) -> np.ndarray:
        model = subject.model
        network = Network(model.session, subject.deconvnet, model.head, np.asarray(model.mean, np.float32),
                          np.asarray(model.std, np.float32))
        class_index = subject.top if target.class_index is None else target.class_index
        return attribute(name, network, image, class_index, **options)[0]  # (H, W)

    return SanityMethod(name, fn, description=f"the {name} map of demo.analyses.evidence (class targets)")


# The methods the checks know: the three backward rules (conv and class targets) and the evidence registry's other
# methods (class targets); its gradient, deconvnet and guided are the rules' own class projections.
METHODS: dict[str, SanityMethod] = {
    **{rule: rule_method(rule) for rule in RULES},
    **{name: evidence_method(name) for name in EVIDENCE},
}


def register_method(method: SanityMethod) -> None:
    """Add ``method`` to ``METHODS`` (replacing one of the same name): it then joins every check and the command's
    ``--methods``. ``register_method(evidence_method("smoothgrad", samples=4))`` replaces SmoothGrad's entry by one
    with fewer noisy copies."""
    METHODS[method.name] = method


def as_map(value: np.ndarray) -> np.ndarray:
    """A method's output as a map (C, H, W) float32: (H, W) gains a channel axis, (1, C, H, W) loses its batch."""
    m = np.asarray(value, dtype=np.float32)
    if m.ndim == 4 and m.shape[0] == 1:
        m = m[0]
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"a method returned a map of shape {np.shape(value)}: expected (C, H, W) or (H, W)")
    return m


def compute_map(method: SanityMethod, subject: Subject, target: Target) -> np.ndarray:
    """``method``'s map (C, H, W) float32 of ``target`` for the subject's image; ValueError when the method does not
    map conv targets."""
    if target.kind != "class" and not method.layer_targets:
        raise ValueError(f"method {method.name!r} maps class targets only, not {target.layer}")
    return as_map(method.fn(subject, subject.image, target))


def parse_methods(names: str | Sequence[str]) -> tuple[str, ...]:
    """Method names, comma-separated or a sequence -> a tuple without repeats, in order; ValueError on a name not in
    ``METHODS`` or none at all."""
    names = [r.strip() for r in (names.split(",") if isinstance(names, str) else names) if r.strip()]
    bad = [r for r in names if r not in METHODS]
    if bad or not names:
        raise ValueError(f"unknown rule or method {bad or names!r}; expected names from {', '.join(METHODS)}")
    return tuple(dict.fromkeys(names))


parse_rules = parse_methods  # the three rules were the first methods


def ssim_map(projection: np.ndarray) -> np.ndarray:
    """What SSIM compares: sum over the channels of |projection| (C, H, W), divided by its maximum -> (H, W)
    float64 in [0, 1] (all zero stays zero)."""
    m = np.abs(np.asarray(projection, dtype=np.float64)).sum(axis=0)
    peak = m.max()
    return m / peak if peak > 0 else m


def similarity(reference: np.ndarray, other: np.ndarray) -> Scores:
    """(spearman_abs, spearman, ssim) of two maps (C, H, W), as ``demo.analyses.sanity`` says: Spearman (scipy) of
    the absolute and of the signed values, SSIM (skimage) of ``ssim_map``. Identical maps give exactly 1; constant
    ones NaN ranks."""
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    p = np.asarray(reference, dtype=np.float64)
    q = np.asarray(other, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 3:
        raise ValueError(f"maps of shapes {p.shape} and {q.shape}: expected two (C, H, W)")
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
    maps: dict[str, np.ndarray]  # method -> (C, H, W) float32
    scores: dict[str, Scores]  # method -> (spearman_abs, spearman, ssim) against step 0's map
    reused: bool  # no re-drawn layer can change the target: step 0's maps, no forward pass

    @property
    def label(self) -> str:
        """The randomized layers joined by "+" ("head+conv5_3"), "none" at step 0."""
        return "+".join(self.randomized) or "none"


@dataclass
class ClassSensitivity:
    """The class maps of the trained model compared with the top-1 class's, per method."""

    top: int  # the trained model's top-1 class
    scores: dict[str, np.ndarray]  # method -> (K, 3) similarity of class k's map to the top class's (row top = 1)

    def mean(self, method: str, metric: str = "spearman_abs") -> float:
        """Mean over the classes other than the top one (NaN-aware): the expected result of Sixt et al.'s
        random-logit test."""
        s = np.delete(self.scores[method][:, METRICS.index(metric)], self.top)
        return float(np.nanmean(s)) if s.size and not np.isnan(s).all() else math.nan


@dataclass
class SanityResult:
    """Everything the checks found for one image and target."""

    target: Target
    class_index: int  # the trained model's top-1 class; a class target's class
    methods: tuple[str, ...]
    seed: int
    probs: np.ndarray  # (K,) trained probabilities
    cascading: list[Step] = field(default_factory=list)
    independent: list[Step] = field(default_factory=list)
    classes: ClassSensitivity | None = None
    # seconds: weights (draws, transposed-conv layouts), forward (sessions, runs), projection, similarity, classes
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def rules(self) -> tuple[str, ...]:
        """The methods (the name from when the three rules were the only ones)."""
        return self.methods

    def steps(self, mode: str) -> list[Step]:
        return self.cascading if mode == "cascading" else self.independent

    @property
    def modes(self) -> list[str]:
        return [m for m in ("cascading", "independent") if self.steps(m)]


def class_sensitivity(net: Deconvnet, head: Head, forward: Forward, rules: Sequence[str] = RULES,
                      top: int | None = None) -> ClassSensitivity:
    """The class-sensitivity check of the backward rules on one image's forward pass (probs (1, K), activations,
    switches): per rule, the ``similarity`` of every class's projection to that of ``top`` (default: the most
    probable class). ``class_check`` does the same for any method."""
    probs, acts, switches = forward
    K = probs.shape[1]
    top = int(probs[0].argmax()) if top is None else top
    scores = {}
    for rule in rules:
        maps = class_projections(net, head, acts, switches, np.arange(K), rule)  # (K, 3, H, W)
        scores[rule] = np.array([similarity(maps[top], maps[k]) for k in range(K)], dtype=np.float64)
    return ClassSensitivity(top, scores)


def class_check(subject: Subject, methods: Sequence[str] = RULES, top: int | None = None) -> ClassSensitivity:
    """The class-sensitivity check (Nie, Zhang & Patel 2018, arXiv 1805.07039: a map that explains a class must
    change with the class; Sixt, Granz & Landgraf 2020, arXiv 1912.09818: the random-logit test) for any methods:
    per method, the ``similarity`` of each class's map to that of ``top`` (default: the subject's top-1 class)."""
    K = subject.forward[0].shape[1]
    top = subject.top if top is None else top
    scores = {}
    for name in methods:
        method = METHODS[name]
        if method.classes is not None:
            maps = [as_map(m) for m in method.classes(subject, subject.image, np.arange(K))]
        else:
            maps = [compute_map(method, subject, Target("class", CONV_LAYERS[-1], class_index=k)) for k in range(K)]
        scores[name] = np.array([similarity(maps[top], maps[k]) for k in range(K)], dtype=np.float64)
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


def _step_subject(rand: Randomizer, image: np.ndarray, base: Forward, key: tuple[str, ...],
                  timed: _Timer) -> Subject:
    """The model with the layers ``key`` re-drawn, and its forward pass of ``image``, checked layer by layer
    (``check_randomized``: RuntimeError when a randomized layer was not computed with its drawn weights, or its
    output equals the trained pass ``base``'s)."""
    for layer in key:
        timed("weights", rand.draws, layer)  # cached for the session and the deconvnet below
    clone = timed("forward", rand.model_for, key)
    forward = timed("forward", clone.run, image)
    check_randomized(rand, key, image, forward, base)
    return Subject(clone, image, forward, timed("weights", rand.deconvnet, key))


def sanity_results(model: OnnxModel, image: np.ndarray, targets: Sequence[str | Target] = ("conv5_3",),
                   methods: str | Sequence[str] = RULES, mode: str = "cascading", seed: int = 0, classes: bool = True,
                   progress: Callable[[int, int], None] | None = None, bar: bool = True,
                   steps: Sequence[int] | None = None) -> list[SanityResult]:
    """``sanity_checks`` for several targets of one image at once: each step's randomized model and forward pass
    is built once and serves every target. One ``SanityResult`` per target, in order; the class check (with
    ``classes``) is done once and shared by them. ``steps``: only these step numbers (0 always; the same numbers in
    both modes), e.g. (1, 2, 7, 14) for head, conv5_3, conv5 and conv4, and every layer re-drawn."""
    _check_input(image, mode)
    methods = parse_methods(methods)
    targets = [parse_target(t, model.class_names) if isinstance(t, str) else t for t in targets]
    if not targets:
        raise ValueError("no target")
    for t in targets:
        for name in methods:
            if t.kind != "class" and not METHODS[name].layer_targets:
                raise ValueError(f"method {name!r} maps class targets only, not {t.layer}")
    timed = _Timer()
    plans = {"cascading": cascading_steps(), "independent": independent_steps()}
    if steps is not None:
        chosen = sorted({0, *steps})
        if any(not 0 <= k < len(plans["cascading"]) for k in chosen):
            raise ValueError(f"steps must lie in 0..{len(ORDER)}, got {list(steps)}")
        plans = {m: [plan[k] if k in chosen else None for k in range(len(plan))] for m, plan in plans.items()}
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

        # Step 0 runs in a session of the checks' settings, so that layers a step leaves trained compute bit for
        # bit what they compute here.
        trained_model = timed("forward", rand.model_for, ())
        base = timed("forward", trained_model.run, image)
        trained_subject = Subject(trained_model, image, base, timed("weights", rand.deconvnet, ()))
        top = trained_subject.top
        K = base[0].shape[1]
        resolved = []
        for t in targets:
            index = top if t.class_index is None else t.class_index
            if t.kind == "class" and not 0 <= index < K:
                raise ValueError(f"the model has classes 0..{K - 1}, got {index}")
            resolved.append(Target(t.kind, t.layer, t.channel, index) if t.kind == "class" else t)

        def maps_of(subject: Subject, target: Target) -> dict[str, np.ndarray]:
            return {name: timed("projection", compute_map, METHODS[name], subject, target) for name in methods}

        trained = [maps_of(trained_subject, t) for t in resolved]
        tick()

        computed: dict[tuple[str, ...], list[tuple[dict[str, np.ndarray], bool]]] = {
            (): [(maps, True) for maps in trained]}
        for key in keys:
            exact = [all(METHODS[n].layer_targets for n in methods) and not any(t.depends_on(layer) for layer in key)
                     for t in resolved]  # see demo.analyses.sanity, "An exact shortcut"
            subject = None if all(exact) else _step_subject(rand, image, base, key, timed)
            computed[key] = [(trained[i], True) if exact[i] else (maps_of(subject, t), False)
                             for i, t in enumerate(resolved)]
            del subject
            tick()

        results = []
        for i, t in enumerate(resolved):
            result = SanityResult(t, top if t.kind != "class" else t.class_index, methods, seed,
                                  base[0][0].astype(np.float32))
            for m in wanted:
                for step, key in enumerate(plans[m]):
                    if key is None:
                        continue  # a step not asked for
                    maps, reused = computed[key][i]
                    scores = {n: timed("similarity", similarity, trained[i][n], maps[n]) for n in methods}
                    result.steps(m).append(Step(m, step, key, maps, scores, reused and bool(key)))
            results.append(result)

        if classes:
            checked = timed("classes", class_check, trained_subject, methods, top)
            for result in results:
                result.classes = checked
            tick()
    for result in results:
        result.timings = timed.timings
    return results


def sanity_checks(model: OnnxModel, image: np.ndarray, target: str | Target = "conv5_3",
                  rules: str | Sequence[str] = RULES, mode: str = "cascading", seed: int = 0, classes: bool = True,
                  progress: Callable[[int, int], None] | None = None, bar: bool = True) -> SanityResult:
    """Run the model-randomization checks (``mode``: cascading, independent or both) and, with ``classes``, the
    class-sensitivity check, for ``image`` (1, 3, H, W) normalised and each method in ``rules`` (names of
    ``METHODS``: the three backward rules and any registered method); see ``demo.analyses.sanity`` for the
    semantics.

    One forward pass per step that needs one (all methods share it; identical steps of the two modes are computed
    once); the trained forward pass and maps are computed once. ``progress(done, total)`` is called after each.
    """
    return sanity_results(model, image, [target], rules, mode, seed, classes, progress, bar)[0]


# ----------------------------------------------------------------------------------------------------------------
# Data randomization: the same maps from another model


def compare_maps(model: OnnxModel, other: OnnxModel, image: np.ndarray, targets: Sequence[str | Target] = ("class",),
                 methods: str | Sequence[str] = RULES) -> dict[tuple[Target, str], Scores]:
    """Each method's map of each target under ``model`` against the same map under ``other`` (e.g. a network
    trained on permuted labels: Adebayo et al.'s data-randomization test): (target, method) -> similarity. A class
    target without a class uses ``model``'s top-1 class for both models; both must have the same classes."""
    methods = parse_methods(methods)
    mine, theirs = Subject(model, image), Subject(other, image)
    K, K_other = mine.forward[0].shape[1], theirs.forward[0].shape[1]
    out: dict[tuple[Target, str], Scores] = {}
    for t in targets:
        t = parse_target(t, model.class_names) if isinstance(t, str) else t
        if t.kind == "class":
            if K != K_other:
                raise ValueError(f"the models have {K} and {K_other} classes: class maps cannot be compared")
            t = Target(t.kind, t.layer, t.channel, mine.top if t.class_index is None else t.class_index)
        for name in methods:
            out[(t, name)] = similarity(compute_map(METHODS[name], mine, t), compute_map(METHODS[name], theirs, t))
    return out
