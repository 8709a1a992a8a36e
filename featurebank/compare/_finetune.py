"""Fine-tuning as one more candidate of ``compare``, when ``--budget`` allows it.

The candidate is the chosen frozen configuration's backbone, fine-tuned above a cut by
:func:`featurebank.finetune.finetune` (which itself keeps the fine-tuned top only when it beats
its frozen probe beyond noise). It runs only when its estimated minutes fit in what is left of
the budget, and it is chosen over the frozen configuration only on comparable evidence: see
docs/compare.md ("Fine-tuning under --budget") for the estimate and the rule.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from featurebank.compare._candidates import Backbone
from featurebank.compare._report import wilson_interval
from featurebank.errors import FeaturebankError, OptionError

log = logging.getLogger("featurebank.compare")

#: finetune's rule: below this many validation images the choice is cross-fitted over FOLDS
#: folds, each a training on (FOLDS - 1) / FOLDS of the images (featurebank.finetune._choice)
MIN_VALIDATION, FOLDS = 2000, 5
#: a training step (forward and backward) costs about three forward passes
BACKWARD_FACTOR = 3.0
_TUNABLE = re.compile(r"(blocks|stage)\.(\d+)$")


@dataclass
class FinetuneCandidate:
    """The fine-tuning row of the table: run or not, and why; its evidence when run."""

    backbone: str
    from_layer: str | None
    status: str  #: "chosen", "not chosen" or "not run"
    reason: str
    estimate_minutes: float | None = None
    left_minutes: float | None = None
    minutes: float | None = None  #: what the run took
    val_accuracy: float | None = None  #: its best epoch on its own validation split
    heldout_accuracy: float | None = None  #: the evidence compared with the frozen CV figure
    heldout_images: int | None = None
    heldout_method: str | None = None
    interval: list[float] | None = None  #: Wilson 95 % of heldout_accuracy
    finetune_choice: str | None = None  #: what finetune kept: "finetuned" or "probe"
    file: str | None = None

    @property
    def chosen(self) -> bool:
        return self.status == "chosen"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """The table's row (after the frozen feature sets), and the reason under it."""
        name = f"{self.backbone} tuned above {self.from_layer or '-'}"
        acc = f"{self.heldout_accuracy:.4f}" if self.heldout_accuracy is not None else "-"
        mark = "*" if self.chosen else " "
        return f"{mark} {name[:43]:<44}{acc:>8}{'':>7}{'finetune':>11}\n    {self.status}: " \
               f"{self.reason}"


def tunable_cut(backbone: Backbone, cuts: tuple[str, ...], wanted: str | None) -> str:
    """The cut above which to fine-tune: ``wanted``, else the deepest ``blocks.N``/``stage.N``
    of the chosen feature set, else of the backbone's catalogue."""
    if wanted:
        return wanted
    for names in (cuts, backbone.catalogue):
        found = [c for c in names if _TUNABLE.match(c)]
        if found:
            return found[-1]
    raise FeaturebankError(f"{backbone.name} lists no blocks.N or stage.N cut to fine-tune "
                           "above")


def estimate_minutes(n: int, ms_cut: float, ms_full: float, epochs: int,
                     val_size: float) -> float:
    """Minutes a fine-tune of ``n`` images is expected to take, erring long: the maps (one
    pass to the cut), ``epochs`` of training the top per training run (each image a forward
    and backward pass, bounded by BACKWARD_FACTOR times the whole network's forward pass), one
    more pass for the probe and the export; and, below MIN_VALIDATION validation images, the
    cross-fitting's FOLDS more runs on (FOLDS - 1) / FOLDS of the images."""
    runs = 1.0 + (FOLDS * (FOLDS - 1) / FOLDS if n * val_size < MIN_VALIDATION else 0.0)
    ms = n * ms_cut + runs * epochs * n * BACKWARD_FACTOR * ms_full + n * ms_full
    return ms / 60000.0


def not_run(backbone: Backbone, from_layer: str | None, reason: str, **figures) -> \
        FinetuneCandidate:
    log.info("fine-tuning %s not run: %s", backbone.name, reason)
    return FinetuneCandidate(backbone.label, from_layer, "not run", reason, **figures)


def decide(cand: FinetuneCandidate, frozen_cv: float, frozen_name: str) -> FinetuneCandidate:
    """The rule: fine-tuning is chosen only when finetune kept its fine-tuned top (it beat its
    own frozen probe beyond noise, paired per image) and the lower end of the Wilson 95 %
    interval of its held-out accuracy is above the chosen frozen configuration's CV accuracy."""
    assert cand.interval is not None and cand.heldout_accuracy is not None
    lo = cand.interval[0]
    figures = (f"held-out accuracy {cand.heldout_accuracy:.4f} (95 % {lo:.4f}-"
               f"{cand.interval[1]:.4f}, {cand.heldout_images} images, {cand.heldout_method}) "
               f"against CV {frozen_cv:.4f} of {frozen_name}")
    if cand.finetune_choice != "finetuned":
        cand.status, cand.reason = "not chosen", (f"{figures}; finetune kept its frozen probe "
                                                  "(the fine-tuned top was not better beyond "
                                                  "noise)")
    elif lo > frozen_cv:
        cand.status, cand.reason = "chosen", f"{figures}: the interval is above it"
    else:
        cand.status, cand.reason = "not chosen", f"{figures}: not above it beyond noise"
    return cand


def run_finetune(backbone: Backbone, from_layer: str, train: str, work: Path, *, n: int,
                 ms_cut: float, ms_full: float, left_minutes: float, epochs: int, seed: int,
                 exclude: frozenset[str], progress: bool) -> tuple[FinetuneCandidate, Any]:
    """Estimate, then run (when it fits) the fine-tune; its candidate row and its result."""
    import time

    from featurebank.finetune import FinetuneOptions, finetune

    opts = FinetuneOptions(epochs=epochs, seed=seed)
    estimate = estimate_minutes(n, ms_cut, ms_full, epochs, opts.val_size)
    figures = {"estimate_minutes": round(estimate, 2), "left_minutes": round(left_minutes, 2)}
    if estimate > left_minutes:
        return not_run(backbone, from_layer, f"estimated {estimate:.1f} min, {left_minutes:.1f} "
                       "min of the budget left", **figures), None
    log.info("fine-tuning %s above %s (estimated %.1f min, %.1f left)", backbone.name,
             from_layer, estimate, left_minutes)
    started = time.perf_counter()
    try:
        result = finetune(train, model=backbone.model, from_layer=from_layer,
                          output=work / "finetune.onnx", options=opts, work_dir=work / "maps",
                          progress=progress, exclude=exclude)
    except FeaturebankError as exc:  # a cut it cannot train above, too few images, ...
        return not_run(backbone, from_layer, str(exc).splitlines()[0], **figures), None
    choice = result.choice
    correct = round(choice["finetuned_accuracy"] * choice["images"])
    cand = FinetuneCandidate(
        backbone.label, from_layer, "not chosen", "",
        estimate_minutes=figures["estimate_minutes"], left_minutes=figures["left_minutes"],
        minutes=round((time.perf_counter() - started) / 60, 2),
        val_accuracy=float(result.val_accuracy),
        heldout_accuracy=float(choice["finetuned_accuracy"]),
        heldout_images=int(choice["images"]), heldout_method=choice["method"],
        interval=list(wilson_interval(correct, int(choice["images"]))),
        finetune_choice=result.chosen)
    return cand, result


def check_finetune_from(backbones: list[Backbone], layer: str | None) -> None:
    """``finetune_from`` names a ``blocks.N``/``stage.N`` cut of every backbone that can be
    fine-tuned: refused before any work otherwise."""
    if not layer:
        return
    wrong = [b.name for b in backbones if not b.is_file
             and (not _TUNABLE.match(layer) or layer not in b.catalogue)]
    if wrong:
        raise OptionError("finetune_from", f"{layer!r} is not a blocks.N or stage.N cut of "
                          f"{', '.join(wrong)} ('featurebank layers MODEL')",
                          owner="CompareOptions")


def consider(chosen, train: str, *, n: int, frozen_cv: float, left_minutes: float, work: Path,
             options, timed: list[str], exclude: frozenset[str], progress: bool,
             ) -> tuple[FinetuneCandidate, Any]:
    """The fine-tuning candidate of the chosen frozen feature set's backbone: not run (and
    why), or run and decided on; and finetune's result when it ran."""
    from featurebank.compare._stores import time_feature_set

    b = chosen.backbone
    if b.is_file:
        return not_run(b, None, "an ONNX file cannot be fine-tuned (no torch code to train); "
                       "compare the model's registry, timm: or torchvision: name instead"), None
    if not Path(train).is_dir():
        return not_run(b, None, "fine-tuning reads a folder of images (one sub-folder per "
                       "class); TRAIN is a list file or a store"), None
    try:
        layer = tunable_cut(b, chosen.cuts, options.finetune_from)
    except FeaturebankError as exc:
        return not_run(b, None, str(exc)), None
    top = [c for c in b.catalogue if c != "logits"][-1]  # the whole network's forward pass
    ms_cut, ms_full = (time_feature_set(b, chosen.pool, (c,), timed, work, options.batch_size)
                       for c in (layer, top))
    cand, result = run_finetune(b, layer, train, work, n=n, ms_cut=ms_cut, ms_full=ms_full,
                                left_minutes=left_minutes, epochs=options.finetune_epochs,
                                seed=options.seed, exclude=exclude, progress=progress)
    if result is not None:
        decide(cand, frozen_cv, chosen.name)
    return cand, result
