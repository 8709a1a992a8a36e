"""Train the top layers from cached maps (torch): the head from the linear probe's solution,
then the top unfrozen at a lower learning rate, one checkpoint per epoch (:func:`fit`).

The layers below the cut never run here: every batch is a slice of the cached float16 maps.
Each epoch's randomness (order, flips, dropout) is seeded from (seed, epoch), so a run resumed
from the checkpoint of epoch k gives the weights of an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from featurebank.errors import FeaturebankError
from featurebank.finetune._data import CachedMaps
from featurebank.finetune._options import FinetuneOptions
from featurebank.finetune._top import TopNet, build_top

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "featurebank.finetune.checkpoint/2"  # /2: probe head, folds, EMA
EVAL_BATCH = 128
#: inverse L2 strengths tried for the probe (on standardised features); the validation split
#: picks one. A probe that fits the training set exactly (C large) leaves the fine-tuning
#: almost no gradient to learn from.
PROBE_CS = (0.01, 0.1, 1.0)
#: training rows below which the probe's solver runs on one BLAS thread
SMALL_PROBE = 5000


@dataclass
class Setup:
    """What every training of a run shares: the maps, their class indices, the frozen top's
    pooled features (the probe's input, computed once) and the options."""

    maps: CachedMaps
    y: np.ndarray
    feats: np.ndarray
    model: str
    n_classes: int
    opts: FinetuneOptions
    progress: bool = True


@dataclass
class Fit:
    """One training on ``train`` rows: the probe, then the top fine-tuned from it; the best
    epoch's weights (chosen on the validation rows) are loaded in ``top``."""

    top: TopNet
    history: list[dict[str, float]]
    best_epoch: int
    best_val_accuracy: float
    probe: dict[str, Any]
    probe_head: dict[str, torch.Tensor]  # the probe's solution as the new head's weights
    resumed_from: int | None = None
    stopped_early: bool = False


def as_batch(rows: np.ndarray, shape) -> torch.Tensor:
    """Cached float16 map rows as a float32 batch: CNN maps (C, H, W order) as NCHW in
    channels-last memory, a ViT's tokens (T, C) as [N, T, C].

    Channels-last is what oneDNN's CPU convolutions want: the top's forward and backward run
    about 30 % faster on it than on the rows' own C, H, W layout (benchmarks/finetune_fmnist).
    """
    batch = torch.from_numpy(rows.astype(np.float32)).view(-1, *shape)
    return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch


def _batches(X: np.ndarray, rows: np.ndarray, shape, size: int):
    for start in range(0, len(rows), size):
        yield as_batch(X[rows[start:start + size]], shape)


@torch.no_grad()
def predict_logits(top: TopNet, X: np.ndarray, shape, rows: np.ndarray | None = None) -> np.ndarray:
    """Eval-mode logits of the top for cached maps (float16 rows widened per batch)."""
    top.eval()
    rows = np.arange(len(X)) if rows is None else rows
    out = [top(xb).numpy() for xb in _batches(X, rows, shape, EVAL_BATCH)]
    return np.concatenate(out) if out else np.zeros((0, top.classifier.out_features), np.float32)


@torch.no_grad()
def pooled_features(top: TopNet, X: np.ndarray, shape, rows: np.ndarray | None = None) -> np.ndarray:
    """The top's pooled 1280-d ``head`` vectors: what a frozen linear probe is trained on."""
    top.eval()
    rows = np.arange(len(X)) if rows is None else rows
    out = [top.pooled(xb).numpy() for xb in _batches(X, rows, shape, EVAL_BATCH)]
    return np.concatenate(out) if out else np.zeros((0, top.classifier.in_features), np.float32)


def _loss_acc(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    t = torch.from_numpy(logits)
    loss = float(F.cross_entropy(t, torch.from_numpy(y)).item()) if len(y) else math.nan
    return loss, float((logits.argmax(1) == y).mean()) if len(y) else math.nan


def fit_probe(setup: Setup, train: np.ndarray, val: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray]:
    """Logistic regression on the frozen top's pooled features: its figures and its solution
    (``W``, ``b`` on the unstandardised features), the new head's starting point.

    C is ``opts.probe_c``, else the best of :data:`PROBE_CS` on the validation rows (the
    first of them when there are none)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    feats, y, opts = setup.feats, setup.y, setup.opts
    # standardised, lbfgs converges in a few hundred iterations instead of thousands; the
    # scaling is folded into the head's weights afterwards
    mean, std = feats[train].mean(0), feats[train].std(0) + 1e-6
    Z = (feats - mean) / std
    chosen = None  # (val accuracy, C, coef, intercept); C from validation unless given
    # warm-started from the solution of the next smaller C (the path runs from strong to weak
    # regularisation): each fit then takes a fraction of the iterations of a cold one
    clf = LogisticRegression(max_iter=500, warm_start=True)
    # a small problem runs on one BLAS thread: the threads' synchronisation at every one of
    # lbfgs' tiny products costs more than they gain (50x slower on a busy 2-core machine)
    with threadpool_limits(1 if len(train) < SMALL_PROBE else opts.threads):
        for C in (opts.probe_c,) if opts.probe_c else PROBE_CS:
            clf.set_params(C=C).fit(Z[train], y[train])
            acc = clf.score(Z[val], y[val]) if len(val) else 0.0
            if chosen is None or acc > chosen[0]:
                chosen = (acc, C, clf.coef_.copy(), clf.intercept_.copy())
    _, C, coef, intercept = chosen
    W = (coef / std).astype(np.float32)
    b = (intercept - coef @ (mean / std)).astype(np.float32)
    if W.shape[0] == 1:  # binary: sigmoid(w.x + b) is softmax over (-(w.x+b)/2, (w.x+b)/2)
        W, b = np.concatenate([-W / 2, W / 2]), np.concatenate([-b / 2, b / 2])
    train_loss, train_acc = _loss_acc(feats[train] @ W.T + b, y[train])
    val_loss, val_acc = _loss_acc(feats[val] @ W.T + b, y[val])
    probe = {"train_accuracy": train_acc, "val_accuracy": val_acc, "val_loss": val_loss,
             "train_loss": train_loss, "C": C,
             "seconds": round(time.perf_counter() - started, 2)}
    return probe, W, b


def _optimizer(top: TopNet, opts: FinetuneOptions, steps: int, warmup: int):
    opt = torch.optim.AdamW([{"params": top.top_parameters(), "lr": opts.lr_top},
                             {"params": top.classifier.parameters(), "lr": opts.lr_head}],
                            weight_decay=opts.weight_decay)
    # linear warm-up over the first epoch (Adam's first steps would otherwise knock the
    # probe's solution and the pretrained top about), then cosine decay to zero: the last
    # epochs settle instead of bouncing
    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / max(warmup, 1))
        return warm * 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / max(steps, 1)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return opt, sched


def _save(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # a kill during the save leaves the previous epoch's checkpoint


def _load(path: Path, identity: dict) -> dict | None:
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FeaturebankError(f"checkpoint {path} is unreadable ({type(exc).__name__}); delete "
                               "it to start over") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        older = isinstance(ckpt, dict) and str(ckpt.get("format", "")).startswith(
            CHECKPOINT_FORMAT.rsplit("/", 1)[0])
        raise FeaturebankError(f"{path} is " + ("a checkpoint of an older featurebank" if older
                                                else "not a featurebank fine-tuning checkpoint")
                               + "; delete it or write the model elsewhere")
    if ckpt["identity"] != identity:
        diff = sorted(k for k in set(identity) | set(ckpt["identity"])
                      if identity.get(k) != ckpt["identity"].get(k))
        raise FeaturebankError(f"checkpoint {path} is of another run (differs in {diff}); delete "
                               "it to start over, or write the model elsewhere")
    return ckpt


def prepare(maps: CachedMaps, classes: list[str], model: str, opts: FinetuneOptions,
            progress: bool = True) -> tuple[Setup, str]:
    """The run's shared :class:`Setup` and the base weights' SHA-256 (checked against the
    weights the maps were cut from)."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    top, base_sha = build_top(model, maps.spec.layer, len(classes), opts.dropout,
                              weights=opts.weights, input_size=opts.input_size)
    if base_sha != maps.spec.model.weights_sha256:
        raise FeaturebankError(f"the maps were cut from weights {maps.spec.model.weights_sha256[:12]}"
                               f", {model} has {base_sha[:12]} here; embed them again")
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[c] for c in maps.labels], dtype=np.int64)
    feats = pooled_features(top, maps.X, maps.shape)
    return Setup(maps, y, feats, model, len(classes), opts, progress), base_sha


def new_top(setup: Setup, seed: int, head: dict[str, torch.Tensor] | None = None) -> TopNet:
    """A fresh top on the pretrained weights (its new head seeded, or ``head``'s weights)."""
    torch.manual_seed(seed)
    top, _ = build_top(setup.model, setup.maps.spec.layer, setup.n_classes, setup.opts.dropout,
                       weights=setup.opts.weights, input_size=setup.opts.input_size)
    if head is not None:
        top.classifier.load_state_dict(head)
    return top.eval()


def fit(setup: Setup, train: np.ndarray, val: np.ndarray, seed: int,
        checkpoint: Checkpoint | None = None) -> Fit:
    """The probe on ``train``, then the top fine-tuned from it; the best epoch by ``val``
    (the last one when ``val`` is empty). With a ``checkpoint``, every epoch is saved and a
    run resumes from the last one saved."""
    opts = setup.opts
    top = new_top(setup, seed)
    steps_per_epoch = math.ceil(len(train) / opts.batch_size)
    opt, sched = _optimizer(top, opts, opts.epochs * steps_per_epoch, steps_per_epoch)
    ema = None if opts.ema is None else MovingAverage(new_top(setup, seed), opts.ema)
    scored = top if ema is None else ema.module  # what validation, the best epoch, export see
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is None:
        probe, W, b = fit_probe(setup, train, val)
        with torch.no_grad():
            top.classifier.weight.copy_(torch.from_numpy(W))
            top.classifier.bias.copy_(torch.from_numpy(b))
        head = {k: v.clone() for k, v in top.classifier.state_dict().items()}
        # the best *fine-tuned* epoch is kept; whether it beats the probe is decided later
        best = {"epoch": 0, "val_accuracy": -1.0, "val_loss": math.inf,
                "state": _copy(top.state_dict())}
        history: list[dict[str, float]] = []
        done, stopped, resumed = 0, False, None
    else:
        top.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        if ema is not None:
            ema.load_state_dict(saved["ema"])
        history, best, probe = saved["history"], saved["best"], saved["probe"]
        head = saved["probe_head"]
        done, stopped = int(saved["epoch"]), bool(saved["stopped"])
        resumed = done
        log.info("resuming from the checkpoint of epoch %d (%s)", done, checkpoint.path)
    for epoch in range(done + 1, opts.epochs + 1):
        if stopped:
            break
        row = _epoch(setup, (top, opt, sched, ema), train, seed, epoch)
        row["val_loss"], row["val_accuracy"] = _loss_acc(
            predict_logits(scored, setup.maps.X, setup.maps.shape, val), setup.y[val])
        history.append(row)
        if not len(val) or _better(row, best):
            best = {"epoch": epoch, "val_accuracy": row["val_accuracy"],
                    "val_loss": row["val_loss"],
                    "state": _copy(scored.state_dict())}
        stopped = opts.patience > 0 and epoch - best["epoch"] >= opts.patience and \
            epoch < opts.epochs
        if checkpoint is not None:
            # a copy: the run keeps the payload to add its folds to, and the live weights
            # change after this epoch (the best epoch's are loaded into them at the end)
            checkpoint.save(epoch=epoch, model=_copy(top.state_dict()), optimizer=opt.state_dict(),
                            scheduler=sched.state_dict(), history=history, best=best,
                            probe=probe, probe_head=head, stopped=stopped,
                            ema=None if ema is None else ema.state_dict())
        if setup.progress or checkpoint is not None:
            log.info("epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1f s%s",
                     epoch, opts.epochs, row["train_loss"], row["train_accuracy"],
                     row["val_loss"], row["val_accuracy"], row["seconds"],
                     " | early stop" if stopped else "")
    top.load_state_dict(best["state"])
    return Fit(top.eval(), history, int(best["epoch"]), float(best["val_accuracy"]), probe, head,
               resumed, stopped)


def _copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in state.items()}


def _better(row: dict, best: dict) -> bool:
    """Higher validation accuracy; a tie goes to the lower validation loss."""
    return row["val_accuracy"] > best["val_accuracy"] or (
        row["val_accuracy"] == best["val_accuracy"] and row["val_loss"] < best["val_loss"])


class MovingAverage:
    """An exponential moving average of a top's parameters (torch's EMA update,
    ``get_ema_multi_avg_fn``), kept in ``module``: a second top of the same build.

    Not torch's ``AveragedModel``: it deep-copies the top, and a copy's pooling would still
    call the original model's head modules (the split's pooling is a function of them). The
    buffers stay the pretrained ones: BatchNorm's statistics are frozen in training.
    """

    def __init__(self, module: TopNet, decay: float):
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        self.module, self.steps = module.eval(), 0
        self._update = get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update_parameters(self, top: TopNet) -> None:
        mine = list(self.module.parameters())
        current = [p.detach() for p in top.parameters()]
        if self.steps == 0:  # the average starts at the first step's weights
            for a, b in zip(mine, current, strict=True):
                a.copy_(b)
        else:
            self._update(mine, current, torch.tensor(self.steps))
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"module": _copy(self.module.state_dict()), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.steps = int(state["steps"])


def _epoch(setup: Setup, state: tuple, train: np.ndarray, seed: int, epoch: int
           ) -> dict[str, float]:
    """One pass over the training rows; ``state`` is (top, optimiser, schedule, moving
    average or None). Its randomness (order, flips, dropout) is seeded from (seed, epoch), so
    a resumed run repeats an uninterrupted one."""
    top, opt, sched, ema = state
    maps, opts = setup.maps, setup.opts
    started = time.perf_counter()
    rng = np.random.default_rng([seed, epoch])
    torch.manual_seed(seed * 100_003 + epoch)  # dropout
    order = train[rng.permutation(len(train))]
    mirror = rng.random(len(order)) < 0.5 if maps.flipped is not None else None
    top.train()
    seen, loss_sum, correct = 0, 0.0, 0
    for start in range(0, len(order), opts.batch_size):
        idx = order[start:start + opts.batch_size]
        xb = maps.X[idx]
        if mirror is not None:
            xb = np.where(mirror[start:start + opts.batch_size, None], maps.flipped[idx], xb)
        yb = torch.from_numpy(setup.y[idx])
        logits = top(as_batch(xb, maps.shape))
        loss = F.cross_entropy(logits, yb, label_smoothing=opts.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if ema is not None:
            ema.update_parameters(top)
        seen += len(idx)
        loss_sum += float(loss.item()) * len(idx)
        correct += int((logits.argmax(1) == yb).sum())
        if setup.progress and seen % (opts.batch_size * 50) == 0:
            log.info("  epoch %d: %d/%d maps, loss %.4f", epoch, seen, len(order), loss_sum / seen)
    seconds = round(time.perf_counter() - started, 3)
    return {"epoch": epoch, "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1), "train_seconds": seconds,
            "seconds": seconds}


class Checkpoint:
    """A run's checkpoint file: the main training's last epoch, and whatever else the run
    adds (the cross-fitted folds), rewritten atomically; refused when of another run."""

    def __init__(self, path: Path, identity: dict):
        self.path, self.identity = path, identity
        self.payload: dict | None = None

    def load(self) -> dict | None:
        if self.payload is None:
            self.payload = _load(self.path, self.identity)
        return self.payload

    def save(self, **parts: Any) -> None:
        self.payload = {**(self.load() or {"format": CHECKPOINT_FORMAT,
                                           "identity": self.identity}), **parts}
        _save(self.path, self.payload)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
