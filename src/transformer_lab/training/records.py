"""What a run records besides checkpoints: metrics.csv (one row per logged step and per validation)
and the plots drawn from it (loss, learning rate)."""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)


def write_metrics_csv(history: list[dict], path: str | Path) -> None:
    """All rows, the union of their columns (training rows and validation rows differ); atomically."""
    if not history:
        return
    fields: list[str] = []
    for row in history:
        fields += [k for k in row if k not in fields]
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(history)
        tmp.replace(path)
    except OSError as e:  # a full disk, say: the earlier file stays whole, no temporary one stays behind
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"{path}: could not write the metrics ({e.strerror or e}); the earlier file is "
                               "unchanged") from e


def read_metrics_csv(path: str | Path, up_to_step: int) -> list[dict]:
    """The rows of ``path`` up to ``up_to_step`` (a resumed run continues the history it had then)."""
    path = Path(path)
    if not path.is_file():
        return []
    hint = "move it away to resume without the earlier history"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: not a metrics file written by the trainer ({e}); {hint}") from None
    whole = []
    for line, row in rows:
        if None in row.values() or None in row:  # fewer or more fields than the header: a damaged line
            log.warning("%s: line %d does not match the header (a damaged file?); left out of the history", path, line)
        else:
            whole.append(row)
    try:
        return [{k: _num(v) for k, v in row.items()} for row in whole if int(row["step"]) <= up_to_step]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a metrics file written by the trainer ({e}); {hint}") from None


def _num(v: str | None):
    if v is None or v == "":
        return None
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss(history: list[dict], path: str | Path, title: str = "loss") -> None:
    plt = _pyplot()
    train = [r for r in history if r.get("loss") is not None]
    val = [r for r in history if r.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    marker = "." if len(train) <= 30 else None  # (a line of one or two rows is not seen without)
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], marker=marker, label="train loss (as optimised)")
    if any(abs(r["nll"] - r["loss"]) > 1e-9 for r in train if r.get("nll") is not None):  # label smoothing, NSP
        ax.plot([r["step"] for r in train], [r["nll"] for r in train], marker=marker,
                label="train NLL of the reference token", alpha=0.7)
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation NLL")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per prediction)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lr(history: list[dict], path: str | Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot([r["step"] for r in history], [r["lr"] for r in history], marker="." if len(history) <= 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.grid(True, alpha=0.3)
    ax.set_title("learning-rate schedule")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finite_or_none(x: float | None) -> float | None:
    """For JSON: NaN and infinity are not JSON numbers."""
    return x if x is not None and math.isfinite(x) else None
