"""Step 3 of the 10-shot benchmark: ``featurebank.finetune`` on each draw's 100 images.

Each draw's images, and the stage's evaluation images, are written as PNG folders in the view
``inv-pad4`` (a dark garment on white in a 4 px frame: how the feature protocols see them best)
under ``WORKDIR/fewshot_images``; their maps are cached under ``WORKDIR/fewshot_maps``.
The run trains the layers above :data:`FROM_LAYER` with mirrored copies, and answers with the
fine-tuned model only when its own rule says so (below 2,000 validation images: cross-fitted
over 5 folds, the lower 95 % bound of the paired accuracy difference above 0); otherwise with
its frozen linear probe (``head``). The protocol's figure is the accuracy of the model the run
answers with; the fine-tuned model's and the probe's are reported beside it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from benchmarks._fewshot_views import MODEL, render
from featurebank.datasets import write_image_folder

VIEW = "inv-pad4"
FROM_LAYER = "blocks.12"
#: 100 images: batches of 32 (3 steps an epoch), the default 8 epochs
OPTIONS = {"epochs": 8, "batch_size": 32, "flip": True, "seed": 0, "patience": 3}


def _folder(root: Path, images: np.ndarray, labels: np.ndarray, index: np.ndarray) -> Path:
    """The images of ``index`` in the view, one sub-folder per class (written once)."""
    if not root.is_dir():
        tmp = root.with_name(root.name + ".partial")
        write_image_folder(render(images[index], VIEW), labels[index], tmp,
                           prefix="", class_names=[str(c) for c in range(10)])
        tmp.rename(root)
    return root


def _one(train: Path, evaluate: Path, workdir: Path) -> dict:
    from featurebank.finetune import finetune

    with tempfile.TemporaryDirectory() as out:
        r = finetune(train, model=MODEL, from_layer=FROM_LAYER, test=evaluate,
                     output=Path(out) / "tuned.onnx", work_dir=workdir / "fewshot_maps",
                     progress=False, **OPTIONS)
    return {"chosen": r.chosen, "accuracy": r.chosen_test_accuracy,
            "finetuned": r.test_accuracy, "probe": r.probe["test_accuracy"],
            "best_epoch": r.best_epoch, "difference": r.choice["difference"],
            "ci95": r.choice["ci95"], "reason": r.choice["reason"],
            "seconds": r.seconds.get("train")}


#: how the protocol is listed beside the feature protocols
ROW = {"step": "3 fine-tune", "views": "inv-pad4 (+ mirrored in training)",
       "layers": f"above {FROM_LAYER}", "mode": "rows",
       "classifier": "featurebank.finetune, its rule", "options": OPTIONS}


def finetune_stage(workdir: Path, images: dict, splits: dict, stage: str) -> dict:
    """The fine-tuning protocol's figures on one stage ('dev' or 'test'): the mean over the
    stage's draws of the chosen model's, the fine-tuned model's and the probe's accuracy."""
    logging.getLogger("featurebank").setLevel(logging.WARNING)
    root = workdir / "fewshot_images"
    pixels, labels = images["train" if stage == "dev" else "test"]
    n = len(splits[stage])
    evaluate = _folder(root / f"{stage}-eval-{n}", pixels, labels, splits[stage])
    draws = [_one(_folder(root / f"{stage}-draw{j}", *images["train"], draw), evaluate, workdir)
             for j, draw in enumerate(splits[f"{stage}_draws"])]
    return {stage: float(np.mean([d["accuracy"] for d in draws])),
            f"{stage}_finetuned": float(np.mean([d["finetuned"] for d in draws])),
            f"{stage}_probe": float(np.mean([d["probe"] for d in draws])),
            f"{stage}_chosen_finetuned": sum(d["chosen"] == "finetuned" for d in draws),
            f"{stage}_draws": draws}
