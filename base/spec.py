"""The project's vocabulary: layer names, preprocessing constants and ONNX names.

Torch-free on purpose: both halves of the project import it (``model/`` for training and export,
``demo/`` for onnxruntime + NumPy inference), and the exported ONNX file carries the same values in its
metadata so that a model file is self-describing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# VGG16 ("configuration D" of Simonyan & Zisserman): output channels of each 3x3 conv, "M" a 2x2/2 max-pool.
# The seed ends with a global max-pool after conv5_3 instead of a fifth 2x2 pool.
CFG_VGG16: tuple[int | str, ...] = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, "M",
    512, 512, 512, "M",
    512, 512, 512,
)  # fmt: skip


def _layer_names(cfg: tuple[int | str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    convs, pools, block, index = [], [], 1, 1
    for item in cfg:
        if item == "M":
            pools.append(f"pool{block}")
            block, index = block + 1, 1
        else:
            convs.append(f"conv{block}_{index}")
            index += 1
    return tuple(convs), tuple(pools)


CONV_LAYERS, POOL_LAYERS = _layer_names(CFG_VGG16)  # ("conv1_1", ..., "conv5_3"), ("pool1", ..., "pool4")
NUM_CLASSES = 12
FEATURE_CHANNELS = 512  # channels of conv5_3, the input of the head


def block_of(layer: str) -> int:
    """Block number (1-5) of a layer name such as ``conv3_2`` or ``pool3``."""
    return int(layer[4]) if layer.startswith("conv") else int(layer[4:])


def pool_below(conv: str) -> str | None:
    """The pool whose output feeds ``conv`` (``pool2`` for ``conv3_1``), or None."""
    return f"pool{block_of(conv) - 1}" if conv.endswith("_1") and block_of(conv) > 1 else None


@dataclass(frozen=True)
class ConvStep:
    """One conv layer as the backward stage walks it: its geometry and the max-pool that feeds it (if any).

    ``kernel``/``stride``/``padding`` are the conv's (square); ``pool`` names the pool whose output is the conv's
    input, with its ``pool_kernel`` and ``pool_stride``. Every projection reads the network from ``STEPS``."""

    name: str
    c_in: int
    c_out: int
    kernel: int = 3
    stride: int = 1
    padding: int = 1
    pool: str | None = None
    pool_kernel: int = 2
    pool_stride: int = 2


def _steps(cfg: tuple[int | str, ...]) -> tuple[ConvStep, ...]:
    steps, c_in, pool = [], 3, None
    convs, pools = _layer_names(cfg)
    names, pool_names = iter(convs), iter(pools)
    for item in cfg:
        if item == "M":
            pool = next(pool_names)
        else:
            steps.append(ConvStep(next(names), c_in, int(item), pool=pool))
            c_in, pool = int(item), None
    return tuple(steps)


STEPS = _steps(CFG_VGG16)  # the conv layers bottom up, conv1_1 ... conv5_3, each with the pool below it


def steps_down(layer: str) -> tuple[ConvStep, ...]:
    """The steps a projection from conv ``layer`` takes, top down: ``layer`` first, conv1_1 last."""
    return STEPS[CONV_LAYERS.index(layer) :: -1]


def conv_channels(layer: str) -> int:
    """Output channels of a conv layer."""
    return [c for c in CFG_VGG16 if c != "M"][CONV_LAYERS.index(layer)]


def stride_of(layer: str) -> int:
    """Pixels of input per position of the layer's feature map (1 for block 1, 16 for block 5)."""
    return 2 ** (block_of(layer) - 1)


def receptive_field(layer: str) -> int:
    """Side in pixels of the input window that one position of ``layer`` sees (conv1_1: 3, conv5_3: 196)."""
    size, jump = 1, 1
    for conv in CONV_LAYERS[: CONV_LAYERS.index(layer) + 1]:
        if pool_below(conv):
            size, jump = size + jump, jump * 2  # a 2x2/2 pool
        size += 2 * jump  # a 3x3 conv
    return size


# Backward rules: how a projection passes each ReLU on its way down. With s the signal arriving from above and
# a the ReLU's forward output (a > 0 exactly where its input is > 0):
#   "deconvnet": relu(s)                    Zeiler & Fergus 2014 (arXiv 1311.2901), the paper this project follows;
#   "guided":    s where s > 0 and a > 0    Springenberg et al. 2015 (arXiv 1412.6806), guided backpropagation;
#   "gradient":  s where a > 0              Simonyan et al. 2014 (arXiv 1312.6034), the plain gradient.
# Unpooling with the switches and the transposed convolutions are the same for all three.
RULES: tuple[str, ...] = ("deconvnet", "guided", "gradient")
POOLED_SIZE = 7  # side of the head's adaptive average pool output (torchvision's VGG: 512 x 7 x 7 into fc6)
HEAD_RELUS: tuple[str, ...] = ("fc6", "fc7")  # the ReLUs of torchvision's head, after its first two Linear layers
RELUS: tuple[str, ...] = (*CONV_LAYERS, *HEAD_RELUS)  # every ReLU a projection can pass, in network order
Rule = str | Sequence[str] | Mapping[str, str]  # one rule for all, one per ReLU of RELUS, or {ReLU name: rule}


def layer_rules(rule: Rule, names: Sequence[str]) -> dict[str, str]:
    """The backward rule of each ReLU in ``names`` (ReLU names of ``RELUS``), as {name: rule}.

    ``rule``: one of ``RULES`` for every ReLU; a sequence, one rule per entry of ``RELUS`` in network order
    (conv1_1 first; entries past the last ReLU of ``names`` are unused); or a dict keyed by ReLU name, which
    must name every ReLU of ``names``. Raises ValueError on anything else.
    """
    if isinstance(rule, str):
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        chosen = dict.fromkeys(names, rule)
    elif isinstance(rule, Mapping):
        missing = [n for n in names if n not in rule]
        if missing:
            raise ValueError(f"the rule dict names no rule for {', '.join(missing)}")
        chosen = {n: rule[n] for n in names}
    else:
        rule = list(rule)
        needed = max(RELUS.index(n) for n in names) + 1 if names else 0
        if len(rule) < needed:
            raise ValueError(f"a rule per ReLU needs {needed} rules ({RELUS[0]} ... {RELUS[needed - 1]}), "
                             f"got {len(rule)}")
        chosen = {n: rule[RELUS.index(n)] for n in names}
    bad = {n: r for n, r in chosen.items() if r not in RULES}
    if bad:
        raise ValueError(f"rule must be one of {RULES}, got {', '.join(f'{n}: {r!r}' for n, r in bad.items())}")
    return chosen


def field_box(layer: str, row: int, col: int) -> tuple[int, int, int]:
    """(top, left, side) in input pixels of the receptive field of position (row, col) of conv ``layer``.

    Not clipped: top/left may be negative and the window may run past the image. For VGG16 (3x3 convs with
    padding 1, 2x2/2 pools) the window of position i starts at i * stride - (side - stride) / 2.
    """
    side, stride = receptive_field(layer), stride_of(layer)
    offset = (side - stride) // 2
    return row * stride - offset, col * stride - offset, side


def clip_box(top: int, left: int, side: int, height: int, width: int) -> tuple[int, int, int, int]:
    """The part (r0, r1, c0, c1) of the square window (top, left, side) that lies inside an (height, width) image."""
    return max(top, 0), min(top + side, height), max(left, 0), min(left + side, width)


# Preprocessing: RGB (never BGR), pixels scaled to [0, 1], then normalised per channel with the ImageNet
# statistics (those torchvision's VGG16 was trained with, so its weights work unchanged).
MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
INPUT_SIZE = 224  # side in pixels; the network is fully convolutional and takes any multiple of 16
SIZE_MULTIPLE = 16  # four 2x2 pools

# The switch-index convention, stated once for the whole project (PyTorch's max_pool2d(return_indices=True)):
SWITCH_CONVENTION = (
    "per-plane: for pooled output (n, c, i, j), switch = h * W_in + w, the flat index of the maximum inside "
    "the (H_in, W_in) input plane of the same (n, c); int64"
)

# ONNX graph names.
INPUT_NAME = "image"  # (N, 3, H, W) float32, normalised as above
PROBS_NAME = "probs"  # (N, num_classes) float32, softmax of the logits
ACTIVATION_OUTPUTS: tuple[str, ...] = CONV_LAYERS  # (N, C, H, W) float32 after ReLU


def switch_output(pool: str) -> str:
    """ONNX output name of a pool's switches: ``pool1`` -> ``pool1_switches``."""
    return f"{pool}_switches"


SWITCH_OUTPUTS: tuple[str, ...] = tuple(switch_output(p) for p in POOL_LAYERS)  # (N, C, H/2, W/2) int64
OUTPUT_NAMES: tuple[str, ...] = (PROBS_NAME, *ACTIVATION_OUTPUTS, *SWITCH_OUTPUTS)

# Keys of the ONNX metadata_props (values are JSON strings).
META_CLASS_NAMES = "class_names"
META_MEAN = "mean"
META_STD = "std"
META_INPUT_SIZE = "input_size"
META_LAYERS = "layer_names"
META_SWITCHES = "switch_convention"
META_MODEL_CARD = "model_card"

CAT12_BREEDS: tuple[str, ...] = (
    "Abyssinian", "Bengal", "Birman", "Bombay", "British Shorthair", "Egyptian Mau",
    "Maine Coon", "Persian", "Ragdoll", "Russian Blue", "Siamese", "Sphynx",
)  # fmt: skip


def default_class_names(num_classes: int) -> list[str]:
    """Names for classes that have none: ``class_0``, ``class_1``, ..."""
    return [f"class_{i}" for i in range(num_classes)]
