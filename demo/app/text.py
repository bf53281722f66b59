"""The words on the page: stage timings, captions, the model's one-line description and its model card."""

from __future__ import annotations

from dataclasses import dataclass

from base.spec import receptive_field, stride_of


@dataclass
class Timings:
    """Seconds spent on one request, per stage.

    preprocess: reading, decoding, resizing and normalising the image; forward: onnxruntime; deconvnet: the NumPy
    projections; encoding: display normalisation to 8-bit pictures and writing the PNG/.npz files. A request served
    from the cache has ``cached`` set, ~0 in the stages it skipped, and ``first``: the timings of the request that
    computed it.
    """

    preprocess: float = 0.0
    forward: float = 0.0
    deconvnet: float = 0.0
    encoding: float = 0.0
    cached: bool = False
    first: Timings | None = None

    @property
    def total(self) -> float:
        return self.preprocess + self.forward + self.deconvnet + self.encoding

    def as_dict(self) -> dict[str, float]:
        """Milliseconds per stage and in total."""
        stages = ("preprocess", "forward", "deconvnet", "encoding")
        return {**{s: 1e3 * getattr(self, s) for s in stages}, "total": 1e3 * self.total}

    def stages(self) -> str:
        """"preprocess 3 ms · forward 41 ms · deconvnet 1.20 s · encoding 30 ms"."""
        return " · ".join(f"{name} {_fmt(seconds)}" for name, seconds in
                          (("preprocess", self.preprocess), ("forward", self.forward),
                           ("deconvnet", self.deconvnet), ("encoding", self.encoding)))

    def markdown(self, provider: str = "", progress: str = "") -> str:
        """One line for the page: each stage, the total and the provider that ran the forward pass."""
        where = f" on {provider.replace('ExecutionProvider', '')}" if provider else ""
        if self.cached and self.first is not None and self.deconvnet == 0:
            text = (f"**Timings** total {_fmt(self.total)} from the cache (encoding {_fmt(self.encoding)}); first "
                    f"computed in **{_fmt(self.first.total)}**{where}: {self.first.stages()}")
        else:
            text = f"**Timings** {self.stages()} · **total {_fmt(self.total)}**{where}"
            if self.cached:
                text += " (forward pass from the cache)"
        return text + (f" — {progress}" if progress else "")


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def layer_caption(layer: str, flat: bool = False) -> str:
    """Caption of a whole-layer reconstruction: the layer's name, and a flag when nothing was there to show."""
    return f"{layer} (all zero)" if flat else layer


def explorer_summary(layer: str, channels: int, h: int, w: int, silent: int) -> str:
    """The layer explorer's headline: the layer's shape, what one position sees, how many channels are silent."""
    side = receptive_field(layer)
    return (f"**{layer}**: {channels} channels of {h} x {w} (each position sees {side} x {side} px of the input, "
            f"one every {stride_of(layer)} px)" + (f"; {silent} silent on this image (grey tiles)" if silent else "")
            + ". Click a feature map or a projection to inspect that channel.")


def channel_caption(layer: str, channel: int, value: float, row: int, col: int, h: int, w: int) -> str:
    """The single-channel view's caption: the strongest activation, where it is, the receptive field it lands in."""
    if value <= 0:
        return (f"**{layer}, channel {channel}** never fires on this image (its largest activation is 0): "
                "there is nothing to project.")
    side = receptive_field(layer)
    return (f"**{layer}, channel {channel}**: strongest activation **{value:.4g}** at row {row}, column {col} of the "
            f"{h} x {w} map. Projected alone (every other activation set to zero), it lands inside the unit's "
            f"{side} x {side} px receptive field, shown cropped beside the same patch of the input.")


def describe(model, size: int, provider: str) -> str:
    """A Markdown line about the model (an ``OnnxModel``): file, classes, input size, provider, its accuracy."""
    card = model.model_card or {}
    acc = next((card[k] for k in ("val_acc", "accuracy", "val_accuracy", "test_acc") if k in card), None)
    text = (f"Model `{model.path.name}`: {len(model.class_names)} classes, {size} x {size} px input, "
            f"onnxruntime on **{model.device.upper()}** (`{provider}`)")
    if isinstance(acc, (int, float)):
        text += f", validation accuracy {100 * acc:.1f}%" if acc <= 1 else f", validation accuracy {acc}"
    return text + "."


def model_card_markdown(model) -> str:
    """The model card (a dict in the ONNX metadata of an ``OnnxModel``) as a Markdown table."""
    card = model.model_card or {}
    if not card:
        return "This model file carries no model card."
    rows = "\n".join(f"| {key} | {str(value).replace('|', '/')} |" for key, value in card.items())
    return "| | |\n|---|---|\n" + rows


# --- prose of the page -----------------------------------------------------------------------------------------

INTRO = """
# Deconvnet: what a VGG16 sees in a cat
Give it a picture. A VGG16 trained on 12 cat breeds names the breed, and a **deconvnet**
([Zeiler & Fergus, 2014](https://arxiv.org/abs/1311.2901)) projects what each of its 13 convolutional layers responds
to back into pixels: the first layers react to edges and colours, the last ones to fur, eyes and whole faces.
"""

HOW_TO_READ = """
**All layers.** Each picture is one layer's activations (all channels together) carried back to the input through
the network's own pooling switches and transposed filters (unpool, ReLU, transposed convolution, layer by layer).
Bright and dark show what drives the layer; grey is neutral.

**Layer explorer.** The feature maps of one layer (each channel is a tile; the merged view sums them) and the
paper's figure: the *k* channels with the strongest activation, each projected alone from its single strongest
position, cropped to where it lands. Click a tile or a projection to see the channel next to the image patch it
responds to.

**Normalisation.** *min-max* stretches each picture between its own minimum and maximum; *signed* keeps zero at
mid-grey so that positive and negative contributions stay apart; *percentile* clips the 1% extremes for contrast.
The download holds the raw float32 reconstructions (`conv1_1/layer` ... `conv5_3/layer`, and `input`, the
normalised tensor the network saw).
"""

OCCLUSION_HELP = """
A grey square (the data set's mean colour) slides over the network's input; at each place the network runs again.
Left to right: the image, the probability of the predicted class (where it drops, the network looks), the total
activation of conv5_3's strongest feature map, and the most likely class with the square there (the paper's
Fig. 7). One forward pass per position: a stride of 16 px costs 196 passes at 224 px, 32 px costs 49.
"""

INVARIANCE_HELP = """
The image shifted vertically, scaled and rotated about its centre (the paper's Fig. 5): per layer, how far its
features move (Euclidean distance divided by the original features' norm; 0 = unchanged), and the probability of
the predicted class.
"""

ATLAS_HELP = """
The paper's Fig. 2 over a whole data set ({images} images): for the chosen channel, the 9 images on which it
responds most strongly, each activation projected alone back to pixels (left) beside the image patch its unit sees
(right), both cut to the unit's receptive field and laid out 3 x 3 by rank. Channels are listed strongest first.
"""

HEALTH_HELP = """
The paper's Fig. 6 found problems by looking at the network itself: first-layer filters that dominate, or
features that never fire. Here: the 64 conv1_1 filters (3 x 3 RGB, each stretched to its own range), and, when the
app is started with `--health DIR` (a folder written by `python -m demo.health --data ... --out DIR`), per layer the
share of dead channels (never above zero on the data set) and rarely firing ones (on fewer than 1% of the images),
the distribution of each channel's peak activation and of the filter norms.
"""

SANITY_HELP = """
Can these pictures be trusted? Adebayo et al. (*Sanity Checks for Saliency Maps*, NeurIPS 2018) re-draw the
network's weights at random, from the head down, one layer more at each step, and watch the picture: a picture
that explains what the network learned must change as its weights are destroyed (the curves fall towards 0 and
the filmstrip dissolves: the rule **passes**); one that stays the same shows the image, not the network (the
curves stay near 1: it **fails**). One forward pass per step, in onnxruntime; a few seconds on a CPU. The summary's
last column is the class sensitivity check (Nie et al., ICML 2018; Sixt et al., *When Explanations Lie*, ICML
2020): how alike the pictures of the predicted class and of each other class are; a picture that explains a class
must change with the class (near 1: it does not).
"""

UNITS_HELP = """
What does one unit respond to, with no data set at hand? Its **feature visualization** (Olah et al., *Feature
Visualization*, Distill 2017) is an image optimised, from noise, to drive the unit as hard as possible: the
channel's mean value before its ReLU (a class: its logit), with Lucid's Fourier parametrization and random
jitter, scale and rotation. Pictures of the default model are shipped; any other unit (or model) gets one made
on request, with fewer steps (about 15 s on 2 idle CPU cores). Beside it: the unit's projection on your image,
the channels that feed it and that it feeds most strongly (summed 3x3 weights, as Distill's *Zoom In* reads
circuits), and, with an atlas, the data set's top 9. The button below re-makes the picture on models whose top
layers are randomized: a picture that survives randomization owes little to training. Measured on 35 conv5_3
units of the default model: once conv5_3 is random, a unit's new picture no longer drives the trained unit (on
average it pushes it below zero) and resembles its trained picture no more than two different units' pictures
resemble each other (SSIM 0.08): feature visualization passes this check, where the deconvnet's conv5_3
projection fails it (0.91 with conv5_3 random). Shipped: the 12 classes and every channel of conv5_3, conv4_3
and conv3_3.
"""
