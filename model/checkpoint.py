"""A training run's files: checkpoints (atomic, ``torch.load(weights_only=True)``), resume, metrics and curves.

A checkpoint (``last.pt``, ``best.pt``) is a dict of tensors and plain values: ``model`` (the raw weights),
``ema`` (``{"model", "updates", "decay"}`` or None), ``model_config``, ``optimizer``, ``scheduler``, ``epoch``,
``config`` (the TrainConfig as a dict), ``class_names``, ``input_size`` (pixels), ``val_acc`` (of the weights an
export uses: the EMA's when there is one), ``best_acc``, ``history`` (the metrics rows) and ``rng``.
"""

from __future__ import annotations

import csv
import dataclasses
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from base.cli import UsageError, atomic_write

if TYPE_CHECKING:
    from model.config import TrainConfig

# On --resume the run's saved settings are kept; only these may be given anew (how long, on what, with what data).
RESUME_OVERRIDES = ("epochs", "workers", "device", "threads", "data")
# Never taken from a saved run: where it is, that it is resumed, and whether a fresh run may replace it.
RUN_LOCAL = ("out", "resume", "overwrite")
CHECKPOINT_KEYS = ("model", "model_config", "config", "epoch")
RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "curves.png", "config.json", "train_list.txt", "val_list.txt")


def save_checkpoint(checkpoint: dict, path: str | Path) -> None:
    """torch.save ``checkpoint`` atomically (``base.cli.atomic_write``): the old file or the new one, never half."""
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def read_checkpoint(path: str | Path) -> dict:
    """A training checkpoint of this project, loaded on the CPU with ``weights_only=True``.

    Raises UsageError (one line naming the file) for a missing file, a file that is not a torch checkpoint, or a
    checkpoint without the keys a resumed run needs.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--resume: {path} does not exist (start the run without --resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip, pickle and weights-only errors alike: not a checkpoint we can read
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise UsageError(f"{path}: not a training checkpoint of model.train ({reason})") from None
    if not isinstance(state, dict) or not all(k in state for k in CHECKPOINT_KEYS):
        raise UsageError(f"{path}: not a training checkpoint of model.train (it lacks "
                         f"{', '.join(k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state)})")
    return state


def resolve_resume(config: TrainConfig, given: set[str] | None = None) -> tuple[TrainConfig, dict | None]:
    """With ``config.resume``: read ``OUT/last.pt`` once and return the run's own settings, and the checkpoint.

    ``given``: the options set on the command line; those outside RESUME_OVERRIDES must equal the saved ones.
    None (a call from Python) takes ``config``'s values of RESUME_OVERRIDES. Without ``resume``: (config, None).
    """
    if not config.resume:
        return config, None
    last = Path(config.out) / "last.pt"
    state = read_checkpoint(last)
    saved = state["config"]
    names = {f.name for f in dataclasses.fields(config)}
    if not isinstance(saved, dict) or set(saved) - names:
        unknown = sorted(set(saved) - names) if isinstance(saved, dict) else ["config"]
        raise UsageError(f"{last}: its settings ({', '.join(unknown)}) are unknown to this version of model.train")
    defaults = dataclasses.replace(config)  # defaults for settings newer than the checkpoint: this call's
    overrides = set(RESUME_OVERRIDES) if given is None else given & set(RESUME_OVERRIDES)
    if given is not None:
        changed = sorted(k for k in given - {*RUN_LOCAL, *RESUME_OVERRIDES}
                         if saved.get(k, getattr(defaults, k)) != getattr(config, k))
        if changed:
            raise UsageError(f"--resume keeps the run's own settings; "
                             f"{', '.join('--' + k.replace('_', '-') for k in changed)} differ from {last} (only "
                             f"{', '.join('--' + k for k in RESUME_OVERRIDES)} may change)")
    merged = dataclasses.replace(defaults, **{**{k: v for k, v in saved.items() if k not in RUN_LOCAL},
                                              **{k: getattr(config, k) for k in overrides}})
    if merged.schedule != "constant" and merged.epochs != saved["epochs"]:
        raise UsageError(f"--resume: the {merged.schedule} schedule of {last} spans {saved['epochs']} epochs; "
                         f"it cannot be stretched to {merged.epochs} (resume with --epochs {saved['epochs']})")
    return merged, state


def check_architecture(state: dict, model: torch.nn.Module, path: Path) -> None:
    """Raise UsageError unless the checkpoint ``state`` holds weights for ``model`` (a VGG of this project)."""
    wanted = model.config()
    if state.get("model_config") != wanted:
        raise UsageError(f"{path}: the checkpoint is of another network ({state.get('model_config')}) than this run "
                         f"builds ({wanted}); resume it with the data it was trained on, or train into another --out")
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise UsageError(f"{path}: its weights do not fit the network ({' '.join(str(err).split())[:200]})") from None


def contiguous_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict as contiguous tensors (channels_last weights are saved in the standard layout)."""
    return {k: v.detach().contiguous() for k, v in module.state_dict().items()}


# --- the run folder ---------------------------------------------------------------------------------------------------

def check_run_folder(config: TrainConfig) -> None:
    """Refuse an --out that is a file, and a fresh run into a folder holding a run, unless --overwrite."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose another --out")
    if not config.resume and (out / "last.pt").exists() and not config.overwrite:
        raise UsageError(f"{out} already holds a run ({out / 'last.pt'}); continue it with --resume, choose "
                         "another --out, or replace it with --overwrite")


def clear_run_folder(out: Path) -> None:
    """Delete the files of an earlier run in ``out`` (a fresh run with --overwrite)."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "evolution", ignore_errors=True)


# --- metrics ----------------------------------------------------------------------------------------------------


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Loss and accuracy against the epoch (train, validation, and the EMA's validation when logged) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for key, style in (("train", "-"), ("val", "--"), ("ema_val", ":")):
        if f"{key}_loss" in rows[0]:
            ax1.plot(epochs, [r[f"{key}_loss"] for r in rows], style, label=key.replace("_", " "))
            ax2.plot(epochs, [r[f"{key}_acc"] for r in rows], style, label=key.replace("_", " "))
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), sync=False)
    plt.close(fig)


def write_metrics(rows: list[dict[str, Any]], out: Path) -> None:
    """``out/metrics.csv`` (one row per epoch) and ``out/curves.png``, each replaced atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(out / "metrics.csv", write, sync=False)
    plot_curves(rows, out / "curves.png")
