"""The descent of the NumPy deconvnet: rows of signals, each in its receptive-field window, down to pixels.

``demo/backward/deconvnet.py`` holds the public functions and modes; this module runs their rows down the layers
(``_descend``), each step's arithmetic being ``demo.backward.kernels``'s. Rows are channels last, (B, h, w, C):
row b is the window at ``origin[b]`` of its feature map, ``boxes[b]`` bounding its non-zero part. Each step
grows the boxes by 1 (a 3x3 transposed convolution) and doubles them (unpooling), and computes only the windows:
one common size per step (the largest box), each placed around its own row's box. Unpooling happens inside the
copy into the next layer's frame (the rows stay pooled until then, ``Place.codes``), with the next layer's
backward rule.

What a descent reads besides its rows (``_Net``): the weights' layouts, the switch codes of the pools and the
channels-last activations the masking rules need, made once per forward pass's array (``_derived``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from base.spec import ConvStep, Rule, layer_rules, steps_down
from demo.backward.kernels import Box, DeconvWeight, Place, _deconv_rows, _runs, switch_codes
from demo.backward.threads import each, our_threads

BATCH_BYTES = 4 << 20  # rows go through a layer together while their inputs and outputs fit this


@dataclass(frozen=True)
class _Net:
    """What a descent reads besides its rows: per conv layer its weight and rule, per pool its switch codes
    (N, h, w, C) (``switch_codes``), and the forward activations (N, h, w, C) of the layers whose rule masks with
    them (channels last, as the rows)."""

    wmats: Mapping[str, DeconvWeight]
    codes: Mapping[str, np.ndarray]
    rules: Mapping[str, str]
    activations: Mapping[str, np.ndarray]


def _net(wmats: Mapping[str, DeconvWeight], switches: Mapping[str, np.ndarray], layer: str, rule: Rule,
         activations: Mapping[str, np.ndarray] | None) -> _Net:
    """The descent from conv ``layer``: each layer's rule, the switch codes of the pools on the way, and the
    activations the masking rules need (their shapes are checked on the way down, ``_check``)."""
    steps = steps_down(layer)[::-1]  # bottom up
    _check_geometry(steps)
    names = [step.name for step in steps]
    rules = layer_rules(rule, names)
    masked = [name for name, r in rules.items() if r != "deconvnet"]
    missing = [name for name in masked if activations is None or name not in activations]
    if missing:
        raise ValueError(f"the rules {sorted({rules[n] for n in missing})} need the forward activations of "
                         f"{', '.join(missing)} (pass activations=)")
    pools = [step.pool for step in steps if step.pool is not None]
    items = [("channels last", activations[name], _channels_last) for name in masked] + \
        [("switch codes", switches[pool], switch_codes) for pool in pools]  # bottom up: the largest first
    made: list = [None] * len(items)  # made[i]: item i derived

    def make(i: int) -> None:
        kind, array, fn = items[i]
        made[i] = _derived(kind, array, fn)

    with our_threads():  # one copy per item, the items on the kernels' threads
        each(make, len(items))
    acts = dict(zip(masked, made[: len(masked)], strict=True))
    codes = dict(zip(pools, made[len(masked) :], strict=True))
    return _Net(wmats, codes, rules, acts)


def _check_geometry(steps: Sequence[ConvStep]) -> None:
    """ValueError unless every step is what the kernels implement: 3x3 convs, stride 1, padding 1; 2x2/2 pools."""
    for s in steps:
        if (s.kernel, s.stride, s.padding) != (3, 1, 1) or (s.pool and (s.pool_kernel, s.pool_stride) != (2, 2)):
            raise ValueError(f"{s.name}: the NumPy stage runs 3x3 convolutions of stride 1 and padding 1 after 2x2/2 "
                             f"pools, not kernel {s.kernel}, stride {s.stride}, padding {s.padding}, pool "
                             f"{s.pool_kernel}x{s.pool_kernel}/{s.pool_stride}")


def _channels_last(activation: np.ndarray) -> np.ndarray:
    """(N, C, h, w) -> (N, h, w, C) float32, contiguous."""
    return np.ascontiguousarray(np.asarray(activation, dtype=np.float32).transpose(0, 2, 3, 1))


_DERIVED: dict[tuple, tuple[weakref.ref, np.ndarray]] = {}  # (kind, array identity) -> (the array, derived)


def _derived(kind: str, array: np.ndarray, make: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``make(array)``, kept as long as ``array`` lives: a forward pass's switches and activations serve many
    projections (the 13 of a layer view, an atlas batch's entries), their codes and channels-last copies are
    made once. Arrays are taken as read-only: one changed in place must come as a new array."""
    if not isinstance(array, np.ndarray):
        return make(np.asarray(array))
    key = (kind, id(array), array.__array_interface__["data"][0], array.shape, array.strides, array.dtype.str)
    hit = _DERIVED.get(key)
    if hit is not None and hit[0]() is array:
        return hit[1]
    value = make(array)
    _DERIVED[key] = (weakref.ref(array, lambda _, key=key: _DERIVED.pop(key, None)), value)
    return value


def _support(x: np.ndarray) -> Box | None:
    """Bounding box of the non-zero entries of x (C, H, W), or None when x is all zero."""
    rows = np.flatnonzero(x.any(axis=(0, 2)))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(x[:, rows[0] : rows[-1] + 1].any(axis=(0, 1)))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _row_bytes(wmat: DeconvWeight, h: int, w: int) -> int:
    """Bytes of one row's input and output of a transposed convolution on an (h, w) window."""
    return 4 * h * w * (wmat.c_in + wmat.c_out)


def _places(boxes: np.ndarray, origin: np.ndarray, window: np.ndarray, image_of: np.ndarray,
            act: np.ndarray | None, codes: np.ndarray | None) -> list[Place]:
    """How the B rows enter their new windows, as runs of rows that one vectorised copy serves.

    ``boxes`` (B, 4) non-zero part of each row in map coordinates, ``origin`` (B, 2) its old window's corner in
    the rows' own map, ``window`` (B, 2) its new window's corner. ``codes`` (N, H/2, W/2, C): the rows are still
    pooled (their map is half the size, ``boxes`` are even) and are unpooled in the copy. With ``act``
    (N, H, W, C), the forward activation of the layer's ReLU, or ``codes``, a run also shares its image and its
    box in the map, and carries those crops.
    """
    scale = 1 if codes is None else 2
    keys = np.column_stack([boxes[:, :2] // scale - origin[:, :1], boxes[:, 2:] // scale - origin[:, 1:],
                            boxes[:, 0] - window[:, 0], boxes[:, 2] - window[:, 1]])
    if act is None and codes is None:
        return [Place(a, b, tuple(keys[a, :4].tolist()), tuple(keys[a, 4:].tolist())) for a, b in _runs(keys)]
    keys = np.column_stack([keys, image_of, boxes])
    places: list[Place] = []
    for a, b in _runs(keys):
        n, r0, r1, c0, c1 = keys[a, 6:].tolist()
        crop = None if act is None else act[n, r0:r1, c0:c1]
        pooled = None if codes is None else codes[n, r0 // 2 : r1 // 2, c0 // 2 : c1 // 2]
        places.append(Place(a, b, tuple(keys[a, :4].tolist()), tuple(keys[a, 4:6].tolist()), crop, pooled))
    return places


def _check(name: str, what: str, array: np.ndarray, shape: tuple[int, int, int]) -> None:
    """ValueError unless ``array`` (N, h, w, C) holds (C, h, w) = ``shape`` maps."""
    C, H, W = shape
    if array.ndim != 4 or array.shape[1:] != (H, W, C):
        N, h, w, c = array.shape if array.ndim == 4 else (0, 0, 0, 0)
        raise ValueError(f"{name} {what} of shape {(N, c, h, w) if array.ndim == 4 else array.shape} do not fit the "
                         f"reconstruction (C, H, W) = {shape}: they must come from the same forward pass")


def _descend(x: np.ndarray, boxes: np.ndarray, origin: np.ndarray, steps: Sequence[ConvStep], size: tuple[int, int],
             net: _Net, image_of: np.ndarray,
             codes: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Project B rows through the conv layers ``steps`` (top down, each with its unpooling) to pixels, in batches.

    x (B, h, w, C), channels last: row b is the window at ``origin[b]`` (B, 2) of its ``size`` (H, W) feature
    map (of its pooled map when ``codes``, the switch codes of the pool below, are given: the rows are unpooled
    on their way into the next layer); ``boxes`` (B, 4) bound each row's non-zero part (r0, r1, c0, c1 in (H, W)
    map coordinates, inside its window); ``image_of`` (B,) picks each row's image in the codes and activations of
    ``net``. Returns pieces (rows, windows (b, h', w', 3), origins (b, 2) in pixels), ``rows`` indexing the B rows.

    Each step works on windows of one common size, the largest box of the rows, each row's window placed around
    its own box: rows far apart cost no more than rows alone. Exact: a row's signal is zero outside its box, which
    a 3x3 transposed convolution grows by 1 on each side and unpooling doubles (a rule only zeroes more). The rows
    go through each layer together while their windows are small (their GEMMs need the rows for enough columns,
    and one call per step beats one per row); once their inputs and outputs would pass ``BATCH_BYTES``, the rest
    of the way goes in groups under it, one after another, each group's arrays staying in the cache.
    """
    B = x.shape[0]
    H, W = size
    for i, step in enumerate(steps):
        name = step.name
        wmat = net.wmats[name]
        lo, hi = step.padding, step.kernel - 1 - step.padding  # a transposed conv's reach above and below
        grown = np.column_stack([np.maximum(boxes[:, 0] - lo, 0), np.minimum(boxes[:, 1] + hi, H),
                                 np.maximum(boxes[:, 2] - lo, 0), np.minimum(boxes[:, 3] + hi, W)])
        Sh, Sw = int((grown[:, 1] - grown[:, 0]).max()), int((grown[:, 3] - grown[:, 2]).max())
        group = max(1, BATCH_BYTES // _row_bytes(wmat, Sh, Sw))
        if B > group:  # split: each group goes the rest of the way on its own
            pieces = []
            for a in range(0, B, group):
                part = slice(a, a + group)
                for rows, y, at in _descend(x[part], boxes[part], origin[part], steps[i:], (H, W), net,
                                            image_of[part], codes):
                    pieces.append((rows + a, y, at))
            return pieces
        window = np.column_stack([np.minimum(grown[:, 0], H - Sh), np.minimum(grown[:, 2], W - Sw)])
        act = net.activations.get(name)
        if act is not None:
            _check(name, "activations", act, (wmat.c_out, H, W))
        x = _deconv_rows(x, _places(boxes, origin, window, image_of, act, codes), wmat, net.rules[name], (Sh, Sw))
        boxes, origin, codes = grown, window, None
        if step.pool is not None:  # unpooled on the way into the next layer
            codes = net.codes[step.pool]
            _check(step.pool, "switches", codes, (wmat.c_in, H, W))
            k = step.pool_stride
            boxes, H, W = k * boxes, k * H, k * W
    return [(np.arange(B), x, origin)]


def _pixel_size(layer: str, h: int, w: int) -> tuple[int, int]:
    """(H, W) of the image whose conv ``layer`` has an (h, w) feature map."""
    scale = int(np.prod([step.pool_stride for step in steps_down(layer) if step.pool is not None]))
    return h * scale, w * scale


def _project_rows(x: np.ndarray, boxes: np.ndarray, origin: np.ndarray, rows: np.ndarray, out: np.ndarray,
                  layer: str, size: tuple[int, int], net: _Net, image_of: np.ndarray,
                  max_rows: int | None) -> np.ndarray:
    """``_descend`` rows ``rows`` of ``out`` (B, 3, H, W) from x (len(rows), h, w, C) of a ``size`` (h, w) map.

    ``max_rows`` caps the rows of one pass (None: all in one pass; 1: each row alone, as a reference).
    """
    steps = steps_down(layer)
    chunk = max_rows or max(len(rows), 1)
    for a in range(0, len(rows), chunk):
        part = slice(a, a + chunk)
        for done, y, at in _descend(x[part], boxes[part], origin[part], steps, size, net, image_of[rows[part]]):
            _, Sh, Sw, _ = y.shape
            for i, (b, (r0, c0)) in enumerate(zip(rows[part][done].tolist(), at.tolist(), strict=True)):
                out[b, :, r0 : r0 + Sh, c0 : c0 + Sw] = y[i].transpose(2, 0, 1)
    return out


def _project_batch(signal: np.ndarray, layer: str, net: _Net, image_of: np.ndarray,
                   max_rows: int | None = None) -> np.ndarray:
    """``project_down`` of each row b of ``signal`` (B, C, h, w) with image ``image_of[b]``'s switches."""
    B, C, h, w = signal.shape
    signal = np.asarray(signal, dtype=np.float32)
    out = np.zeros((B, 3, *_pixel_size(layer, h, w)), dtype=np.float32)
    supports = [_support(signal[b]) for b in range(B)]
    rows = np.array([b for b, s in enumerate(supports) if s is not None], dtype=np.int64)
    if rows.size == 0:
        return out
    boxes = np.array([supports[b] for b in rows.tolist()], dtype=np.int64)
    x = (signal if rows.size == B else signal[rows]).transpose(0, 2, 3, 1)  # (B', h, w, C); windows = whole maps
    return _project_rows(x, boxes, np.zeros((rows.size, 2), np.int64), rows, out, layer, (h, w), net,
                         np.asarray(image_of), max_rows)


def _project_points(activation: np.ndarray, layer: str, net: _Net, image: np.ndarray, channel: np.ndarray,
                    row: np.ndarray, col: np.ndarray, max_rows: int | None = None,
                    values: np.ndarray | None = None) -> np.ndarray:
    """Project single activations, each alone: row b is ``activation[image[b], channel[b], row[b], col[b]]``.

    ``activation`` (N, C, h, w) of conv ``layer``; image, channel, row, col (B,) int; ``values`` (B,) replaces the
    activations read there. Returns (B, 3, H, W). The rows start as 1x1 windows (no (B, C, h, w) signal is built)
    and go down together.
    """
    N, C, h, w = activation.shape
    image, channel, row, col = (np.asarray(a, dtype=np.int64).reshape(-1) for a in (image, channel, row, col))
    B = image.size
    out = np.zeros((B, 3, *_pixel_size(layer, h, w)), dtype=np.float32)
    if values is None:
        values = activation[image, channel, row, col]
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    rows = np.flatnonzero(values != 0)  # a zero activation projects to zero
    x = np.zeros((rows.size, 1, 1, C), dtype=np.float32)
    x[np.arange(rows.size), 0, 0, channel[rows]] = values[rows]
    boxes = np.column_stack([row, row + 1, col, col + 1])[rows]
    return _project_rows(x, boxes, boxes[:, [0, 2]], rows, out, layer, (h, w), net, image, max_rows)
