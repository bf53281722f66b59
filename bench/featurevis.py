"""Speed of feature visualization: ``demo.featurevis`` (onnxruntime + NumPy) against a plain PyTorch loop.

    python bench/featurevis.py                       # 112 and 224 px, 2 threads, a batch of 4 conv5_3 channels
    python bench/featurevis.py --steps 8 --sizes 112 --batch 8

Both sides optimise the same objective (the pre-ReLU mean of conv5_3 channels 0..B-1), with the same Fourier
parametrization, the same random transformations (the same drawn parameters) and Adam, for --steps steps, on the same
weights: the PyTorch network is built from the .onnx file's folded conv weights and biases and its head (not
torch-lucent, whose kornia and scikit-learn would enter the install). Printed per size: units per minute (targets
finished per minute at the given steps), the ratio NumPy / PyTorch of the time per unit (goal <= 1.0), and where the
time goes (forward, backward, parametrization + transformations + Adam); with --on-request, the time of the app's
picture made on request (one unit alone). Both run in this process, alternately,
one after the other per size, with --threads threads each; on a loaded machine compare the ratios, not the times.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def torch_model(vis):
    """A PyTorch VGG16 with the .onnx file's folded conv weights, biases and head (eval mode, no batch norm)."""
    import torch

    from base.spec import CONV_LAYERS
    from model.vgg import VGG

    head = vis.model.head
    net = VGG(num_classes=head.num_classes, batch_norm=False, head=head.kind).eval()
    with torch.no_grad():
        for name in CONV_LAYERS:
            net.convs[name].weight.copy_(torch.from_numpy(vis.model.weights[name].copy()))
            net.convs[name].bias.copy_(torch.from_numpy(vis.biases[name].copy()))
        linears = [m for m in net.classifier.modules() if isinstance(m, torch.nn.Linear)]
        for m, (w, b) in zip(linears, head.linears, strict=True):
            m.weight.copy_(torch.from_numpy(w.copy()))
            m.bias.copy_(torch.from_numpy(b.copy()))
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def torch_run(net, vis, channels, size, steps, draws, spectrum0):
    """The PyTorch loop; returns seconds (forward, backward, transforms) and the last objective values."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from demo.analyses.featurevis import transforms
    from demo.analyses.featurevis.param import COLOR_MATRIX, MAGIC, spectrum_scale

    layer = "conv5_3"
    s = torch.from_numpy(spectrum0.copy()).requires_grad_(True)
    opt = torch.optim.Adam([s], lr=0.05)
    scale = torch.from_numpy(spectrum_scale(size, size))
    color = torch.from_numpy(COLOR_MATRIX)
    mean = torch.from_numpy(vis.mean)
    std = torch.from_numpy(vis.std)
    n_in, n_out = size + transforms.MARGIN, size + transforms.MARGIN_OUT
    index = torch.arange(len(channels))
    chans = torch.as_tensor(channels)
    t_fwd = t_bwd = t_tf = 0.0
    values = None
    for params in draws:
        t0 = time.perf_counter()
        opt.zero_grad()
        coeffs = torch.complex(s[:, 0], s[:, 1]) * scale
        img = torch.fft.irfft2(coeffs, s=(size, size), norm="ortho") / MAGIC
        rgb = torch.sigmoid(torch.einsum("ij,bjhw->bihw", color, img))
        x = F.pad(rgb, (transforms.PAD,) * 4, value=transforms.FILL)
        x = torch.stack([x[b, :, r : r + n_in, c : c + n_in] for b, (r, c) in enumerate(params.jitter1.tolist())])
        grids = []
        for sc, an in zip(params.scale.tolist(), params.angle.tolist(), strict=True):
            rr, cc = transforms.source_coords(n_in, n_out, sc, an)
            grids.append(np.stack([2 * cc / (n_in - 1) - 1, 2 * rr / (n_in - 1) - 1], axis=-1))
        grid = torch.from_numpy(np.stack(grids).astype(np.float32))
        x = F.grid_sample(x - transforms.FILL, grid, align_corners=True) + transforms.FILL
        x = torch.stack([x[b, :, r : r + size, c : c + size] for b, (r, c) in enumerate(params.jitter2.tolist())])
        x = (x - mean) / std
        t1 = time.perf_counter()
        h = x
        for name, conv in net.convs.items():
            h = conv(h)
            if name == layer:
                break
            h = F.relu(h)
            if net.pool_after.get(name):
                h = F.max_pool2d(h, 2, 2)
        objective = h[index, chans].mean(dim=(1, 2))
        t2 = time.perf_counter()
        (-objective.sum()).backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        t_tf += (t1 - t0) + (t4 - t3)
        t_fwd += t2 - t1
        t_bwd += t3 - t2
        values = objective.detach().numpy()
    return (t_fwd, t_bwd, t_tf), values


def numpy_run(vis, targets, size, steps, draws, spectrum0):
    from demo.analyses.featurevis.optimize import Adam, Timings, step
    from demo.analyses.featurevis.param import FourierImage

    vis.timings = Timings()
    spectrum = spectrum0.copy()
    adam = Adam(spectrum.shape)
    fourier = FourierImage(size)
    values = None
    for params in draws:
        values, _, grad = step(vis, targets, spectrum, params, fourier)
        t0 = time.perf_counter()
        adam.ascend(spectrum, grad)
        vis.timings.transforms += time.perf_counter() - t0
    t = vis.timings
    return (t.forward, t.backward, t.transforms), values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/featurevis.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="FILE.onnx", help="exported model (default: models/vgg16_cat12.onnx)")
    p.add_argument("--sizes", default="112,224", help="comma-separated picture sides (default: %(default)s)")
    p.add_argument("--steps", type=int, default=16, help="steps per unit (default: %(default)s)")
    p.add_argument("--batch", type=int, default=4, help="conv5_3 channels per batch (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="threads of each side (default: %(default)s)")
    p.add_argument("--on-request", action="store_true",
                   help="also time the app's picture made on request (one unit alone, extrapolated from --steps)")
    args = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np
    import torch

    from demo.analyses.featurevis import transforms
    from demo.analyses.featurevis.objective import Target
    from demo.analyses.featurevis.optimize import load
    from demo.analyses.featurevis.param import init_spectrum

    torch.set_num_threads(args.threads)
    vis = load(args.model, device="cpu", threads=args.threads)
    net = torch_model(vis)
    channels = list(range(args.batch))
    targets = [Target("conv5_3", c) for c in channels]
    print(f"load average before: {os.getloadavg()[0]:.2f}; {args.threads} threads; {args.steps} steps; "
          f"batch of {args.batch} conv5_3 channels")
    for size in [int(s) for s in args.sizes.split(",")]:
        rng = np.random.default_rng(0)
        spectrum0 = init_spectrum(rng, args.batch, size)
        draws = [transforms.draw(rng, args.batch) for _ in range(args.steps)]
        numpy_run(vis, targets, size, 1, draws[:1], spectrum0)  # warm-up of both sides
        torch_run(net, vis, channels, size, 1, draws[:1], spectrum0)
        (nf, nb, nt), nv = numpy_run(vis, targets, size, args.steps, draws, spectrum0)
        (tf_, tb, tt), tv = torch_run(net, vis, channels, size, args.steps, draws, spectrum0)
        n_total, t_total = nf + nb + nt, tf_ + tb + tt
        per_min = 60 * args.batch / n_total, 60 * args.batch / t_total
        print(f"\n{size} px: numpy {per_min[0]:.2f} units/min, torch {per_min[1]:.2f} units/min at {args.steps} "
              f"steps; time per unit numpy / torch = {n_total / t_total:.2f}")
        print(f"  numpy  forward {nf:6.2f} s  backward {nb:6.2f} s  transforms+param+adam {nt:5.2f} s")
        print(f"  torch  forward {tf_:6.2f} s  backward {tb:6.2f} s  transforms+param+adam {tt:5.2f} s")
        print(f"  last objective values: numpy {np.round(nv, 3).tolist()} torch {np.round(tv, 3).tolist()}")
    if args.on_request:
        from demo.app.units import ON_REQUEST

        size = ON_REQUEST.size
        rng = np.random.default_rng(1)
        spectrum0 = init_spectrum(rng, 1, size)
        draws = [transforms.draw(rng, 1) for _ in range(args.steps)]
        numpy_run(vis, targets[:1], size, 1, draws[:1], spectrum0)
        start = time.perf_counter()
        numpy_run(vis, targets[:1], size, args.steps, draws, spectrum0)
        per_step = (time.perf_counter() - start) / args.steps
        print(f"\nthe app's picture on request (one unit, {ON_REQUEST.steps} steps at {size} px): {per_step:.3f} s per "
              f"step, {per_step * ON_REQUEST.steps:.1f} s per picture (target: about 30 s on an idle 2-core CPU)")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
