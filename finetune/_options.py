"""The options of a fine-tuning run, validated before any file is touched (standard library
only: the command line builds its flags from them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from featurebank.options import Interval, check_options, option

#: fields that do not change the weights (a checkpoint resumes whatever they are)
RUN_ONLY = ("patience", "threads", "keep_checkpoint", "tta_flip")


@dataclass(frozen=True)
class FinetuneOptions:
    """How the top layers are trained from the cached maps.

    Parameters
    ----------
    epochs : int
        Most epochs of fine-tuning (after the head is initialised from the linear probe).
    val_size : float
        Fraction of the training images held out, stratified by class, for validation (early
        stopping and the choice of the best epoch).
    seed : int
        Seeds the split, the order of the batches, dropout and the flips: two runs with the same
        seed, data and thread count give the same weights.
    flip : bool
        Also cache horizontally flipped maps (one more trunk pass per image) and train on the
        flipped copy of each image half the time.
    lr_head, lr_top : float
        AdamW learning rates of the new linear head and of the unfrozen top layers (lower:
        they start from pretrained weights).
    batch_size : int
        Maps per optimisation step.
    weight_decay : float
        AdamW decoupled weight decay.
    label_smoothing : float
        Cross-entropy label smoothing.
    patience : int
        Stop after this many epochs without a better validation accuracy (0: never stop early).
    probe_c : float, optional
        Inverse L2 strength of the logistic-regression probe (on standardised features) that
        initialises the head; default: the best of 0.01, 0.1, 1 on the validation split.
    threads : int, optional
        torch intra-op threads (default: torch's choice).
    dropout : float
        Dropout before the head while training (Lite's own is 0.2).
    keep_checkpoint : bool
        Keep ``OUTPUT.ckpt`` once the tuned file is written (by default it is removed then).
    ema : float, optional
        Decay of an exponential moving average of the trained weights, updated after every
        step (e.g. 0.999); validation, the best epoch and the export use the averaged weights.
    input_size : int, optional
        Square input side the model is exported and the maps are computed at (default: the
        model's own, 224 for Lite0): smaller inputs make every map, and every epoch, cheaper.
    tta_flip : bool
        Flip test-time augmentation in the exported graph: its ``logits`` are the mean of the
        image's and its mirror's (the report's validation and test figures are without it).
    weights : str, optional
        A local state dict of the model's architecture (``torch.save(model.state_dict(), F)``)
        the maps are cut from and the top starts from (default: the model's pretrained weights,
        which timm/torchvision download on first use); recorded in the tuned file's lineage.
    """

    epochs: int = option(8, Interval(int, 1, None), help="most epochs of fine-tuning")
    val_size: float = option(0.1, Interval(float, 0, 1, "neither"),
                             help="validation fraction, stratified")
    seed: int = option(0, int, help="seeds the split, batch order, flips and dropout")
    flip: bool = option(False, bool, help="also cache horizontally mirrored maps and train on "
                        "them half the time")
    lr_head: float = option(1e-3, Interval(float, 0, None, "neither"),
                            help="AdamW learning rate of the new head")
    lr_top: float = option(1e-4, Interval(float, 0, None, "neither"),
                           help="AdamW learning rate of the unfrozen top layers")
    batch_size: int = option(64, Interval(int, 1, None), help="maps per step")
    weight_decay: float = option(1e-4, Interval(float, 0, None), help="AdamW weight decay")
    label_smoothing: float = option(0.0, Interval(float, 0, 1, "left"))
    patience: int = option(3, Interval(int, 0, None), help="early stopping after this many "
                           "epochs without progress (0: off)")
    probe_c: float | None = option(None, None, Interval(float, 0, None, "neither"),
                                   help="C of the probe that starts the head (default: chosen "
                                   "on validation)")
    threads: int | None = option(None, None, Interval(int, 1, None),
                                 help="torch threads (default: torch's choice)")
    dropout: float = option(0.2, Interval(float, 0, 1, "left"),
                            help="dropout before the head while training")
    keep_checkpoint: bool = option(False, bool, help="keep OUTPUT.ckpt once the tuned file is "
                                   "written")
    ema: float | None = option(None, None, Interval(float, 0, 1, "left"),
                               help="decay of an exponential moving average of the weights, "
                               "used for validation and export (e.g. 0.999; default: none)")
    input_size: int | None = option(None, None, Interval(int, 32, None),
                                    help="square input side the maps are computed at "
                                    "(default: the model's)")
    tta_flip: bool = option(False, bool, help="exported logits average the image's and its "
                            "mirror's (flip TTA in the graph)")
    weights: str | None = option(None, None, str, help="local state dict of the model's "
                                 "architecture to start from (default: its pretrained weights)")

    def __post_init__(self) -> None:
        check_options(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def training_identity(self) -> dict[str, Any]:
        """The fields that change the weights: a checkpoint resumes only under the same ones
        (``patience`` may change; ``threads`` only changes the speed)."""
        return {k: v for k, v in asdict(self).items() if k not in RUN_ONLY}

    def replace(self, **changes: Any) -> FinetuneOptions:
        return replace(self, **changes)
