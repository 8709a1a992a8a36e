"""The fine-tuning report: per-epoch curves (PNG) and the test accuracy beside the probe's."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from featurebank.classical import pyplot, save_figure
from featurebank.errors import FeaturebankError
from featurebank.paths import write_json


def write_report(result: Any, folder: Path) -> Path:
    """``finetune.json`` (everything :meth:`FinetuneResult.summary` says) and ``curves.png``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FeaturebankError(f"cannot create report folder {folder}: {exc.strerror or exc}") from exc
    summary = result.summary()
    write_json(summary, folder / "finetune.json")
    plot_curves(result.history, result.probe, result.test_accuracy, folder / "curves.png",
                title=f"{result.model} fine-tuned above {result.layer}")
    return folder


def plot_curves(history: list[dict], probe: dict, test_accuracy: float | None, out: Path,
                title: str = "") -> Path:
    """Loss and accuracy per epoch (train and validation), the probe as epoch 0, the test
    accuracies of the best epoch and of the frozen probe as markers."""
    plt = pyplot()
    epochs = [0] + [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(epochs, [probe.get("train_loss", math.nan)] + [h["train_loss"] for h in history],
                 "o-", label="train")
    ax_loss.plot(epochs, [probe.get("val_loss", math.nan)] + [h["val_loss"] for h in history],
                 "s-", label="validation")
    ax_loss.set(xlabel="epoch (0 = linear probe)", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [probe.get("train_accuracy", math.nan)]
                + [h["train_accuracy"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [probe["val_accuracy"]] + [h["val_accuracy"] for h in history], "s-",
                label="validation")
    if test_accuracy is not None:
        ax_acc.axhline(test_accuracy, color="C2", ls="--",
                       label=f"test, fine-tuned: {test_accuracy:.4f}")
    if probe.get("test_accuracy") is not None:
        ax_acc.axhline(probe["test_accuracy"], color="C3", ls=":",
                       label=f"test, frozen probe: {probe['test_accuracy']:.4f}")
    ax_acc.set(xlabel="epoch (0 = linear probe)", ylabel="accuracy", title="accuracy")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return save_figure(fig, out)
