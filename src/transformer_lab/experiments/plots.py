"""Figures for the experiments: one helper that opens a matplotlib figure (no display needed) and
saves it where the result goes, so every figure has a title, labelled axes and the same size."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def figure(path: Path, title: str, ncols: int = 1, width: float = 6.5, height: float = 4.0) -> Iterator[list]:
    """Yields the axes (a list of ``ncols``); saves ``path`` (PNG) on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols if ncols > 1 else width, height), squeeze=False)
    try:
        yield list(axes[0])
        fig.suptitle(title, fontsize=10)
        for ax in axes[0]:
            ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
