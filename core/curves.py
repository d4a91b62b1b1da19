"""A run's learning curves as a picture: training loss and validation top-1 per level against the
training time, drawn from ``metrics.jsonl`` (torch-free, so the benchmark and the run share it)."""

from __future__ import annotations

from pathlib import Path

from etalage.core.rundir import RunDir
from etalage.files import atomic_write

LEVELS = (("val_top1", "leaf"), ("val_level2_top1", "level 2"), ("val_level1_top1", "level 1"))


def write_curves(run: RunDir, path: str | Path | None = None) -> Path | None:
    """Draw ``run``'s metrics into ``path`` (default ``RUN/curves.png``), atomically; None when the run
    has no metrics yet."""
    lines = run.metrics()
    if not lines:
        return None
    from matplotlib.figure import Figure  # not pyplot: its figures and backend are the caller's

    path = Path(path or run.curves_file)
    minutes = [m["elapsed_s"] / 60 for m in lines]
    fig = Figure(figsize=(10, 3.6))
    ax_loss, ax_top1 = fig.subplots(1, 2)
    ax_loss.plot(minutes, [m["train_loss"] for m in lines], marker="o", color="tab:red")
    ax_loss.set(xlabel="training minutes", ylabel="training loss", title="loss")
    for key, label in LEVELS:
        values = [m.get(key) for m in lines]
        if all(v is not None for v in values):
            ax_top1.plot(minutes, values, marker="o", label=label)
    heads = [m["elapsed_s"] / 60 for m in lines if m.get("phase") == "head"]
    for ax in (ax_loss, ax_top1):
        ax.grid(alpha=0.3)
        if heads:
            ax.axvspan(0, max(heads), color="0.9", label="head only" if ax is ax_top1 else None)
    ax_top1.set(xlabel="training minutes", ylabel="validation top-1", title=f"validation ({lines[-1]['val_products']} "
                                                                              f"products)")
    ax_top1.legend(loc="lower right")
    fig.suptitle(str(run.path.name))
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=90)
    return path
