"""Metrics and the pictures people would rather see than read (PNG, matplotlib Agg)."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
)


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Lay out, write as PNG and close ``fig`` (an open figure holds its memory)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def metrics(y_true, y_pred, classes) -> dict:
    """Accuracy, balanced accuracy, macro F1 and per-class accuracy.

    A class predicted but absent from ``y_true`` (or the reverse) is normal on a small test
    set; scikit-learn's warnings about it are not shown (the numbers already account for it).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    per_class = {str(c): float(np.mean(y_pred[y_true == c] == c)) for c in classes
                 if np.any(y_true == c)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"accuracy": float(accuracy_score(y_true, y_pred)),
                "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
                "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
                "n": int(len(y_true)), "per_class_accuracy": per_class}


def plot_confusion(y_true, y_pred, classes, path: Path, title: str) -> Path:
    plt = pyplot()
    cm = confusion_matrix(y_true, y_pred, labels=classes, normalize="true")
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * n + 2), max(4, 0.6 * n + 1.5)))
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{cm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    # several concatenated feature sets make a long title: wrap it to the figure's width
    width_chars = int(fig.get_figwidth() * 11)
    ax.set_title("\n".join(textwrap.wrap(title, width_chars)), fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)


def sweep_order(rows: list[dict]) -> list[dict]:
    """Rows by cost (FLOPs share up to the cut), unknown costs last; ties keep their order (the
    sweep gives them shallow to deep), so the cost line never zig-zags."""
    return sorted(rows, key=lambda r: (r.get("flops_share") is None, r.get("flops_share") or 0.0))


def plot_sweep(rows: list[dict], path: Path, title: str = "accuracy per cut") -> Path:
    """Accuracy per layer (bars, axis from 0 %) against the share of FLOPs each cut costs
    (line), cheapest cut first."""
    plt = pyplot()
    rows = sweep_order(rows)
    names = [r["layer"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(rows) + 2), 4))
    ax.bar(range(len(rows)), [100 * r["accuracy"] for r in rows], color="tab:blue")
    ax.set_xticks(range(len(rows)), names, rotation=45, ha="right")
    ax.set_ylabel("test accuracy (%)", color="tab:blue")
    ax.set_ylim(0, 100)  # from zero: a bar's height is its accuracy, not a difference
    costs = [r.get("flops_share") for r in rows]
    if any(c is not None for c in costs):
        ax2 = ax.twinx()
        ax2.plot(range(len(rows)), [100 * (c or np.nan) for c in costs], "o-", color="tab:red")
        ax2.set_ylabel("FLOPs spent up to the cut (%)", color="tab:red")
        ax2.set_ylim(0, 105)
    ax.set_title(title)
    return save_figure(fig, path)


def plot_fewshot(curves: dict[str, list[tuple[int, float]]], path: Path,
                 title: str = "accuracy vs labelled images per class") -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in curves.items():
        ks, accs = zip(*points, strict=True)
        ax.plot(ks, [100 * a for a in accs], "o-", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("labelled images per class")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return save_figure(fig, path)


