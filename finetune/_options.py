"""The options of a fine-tuning run, validated before any file is touched (no torch here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from featurebank.errors import FeaturebankError

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
    """

    epochs: int = 8
    val_size: float = 0.1
    seed: int = 0
    flip: bool = False
    lr_head: float = 1e-3
    lr_top: float = 1e-4
    batch_size: int = 64
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    patience: int = 3
    probe_c: float | None = None
    threads: int | None = None
    dropout: float = 0.2
    keep_checkpoint: bool = False
    ema: float | None = None
    input_size: int | None = None
    tta_flip: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (0.0 < self.val_size < 1.0, "val_size must be a fraction between 0 and 1"),
            (self.lr_head > 0 and self.lr_top > 0, "lr_head and lr_top must be > 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0.0 <= self.label_smoothing < 1.0, "label_smoothing must be in [0, 1)"),
            (self.patience >= 0, "patience must be >= 0"),
            (self.probe_c is None or self.probe_c > 0, "probe_c must be > 0"),
            (self.threads is None or self.threads >= 1, "threads must be >= 1"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (self.ema is None or 0.0 <= self.ema < 1.0, "ema (a decay) must be in [0, 1)"),
            (self.input_size is None or self.input_size >= 32, "input_size must be >= 32"),
        ]
        for ok, message in checks:
            if not ok:
                raise FeaturebankError(f"finetune: {message}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def training_identity(self) -> dict[str, Any]:
        """The fields that change the weights: a checkpoint resumes only under the same ones
        (``patience`` may change; ``threads`` only changes the speed)."""
        return {k: v for k, v in asdict(self).items() if k not in RUN_ONLY}

    def replace(self, **changes: Any) -> FinetuneOptions:
        return replace(self, **changes)
