"""Train the top layers from cached maps (torch): the head from the linear probe's solution,
then the top unfrozen at a lower learning rate, one checkpoint per epoch.

The layers below the cut never run here: every batch is a slice of the cached float16 maps.
Each epoch's randomness (order, flips, dropout) is seeded from (seed, epoch), so a run resumed
from the checkpoint of epoch k gives the weights of an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from featurebank.errors import FeaturebankError
from featurebank.finetune._data import CachedMaps
from featurebank.finetune._options import FinetuneOptions
from featurebank.finetune._top import TopNet, build_top

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "featurebank.finetune.checkpoint/1"
EVAL_BATCH = 128
#: inverse L2 strengths tried for the probe (on standardised features); the validation split
#: picks one. A probe that fits the training set exactly (C large) leaves the fine-tuning
#: almost no gradient to learn from.
PROBE_CS = (0.01, 0.1, 1.0)


@dataclass
class Trained:
    """What training leaves: the best top, the curves and the probe it started from."""

    top: TopNet
    history: list[dict[str, float]]
    best_epoch: int
    best_val_accuracy: float
    probe: dict[str, Any]
    base_sha256: str
    resumed_from: int | None = None
    stopped_early: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def as_batch(rows: np.ndarray, shape) -> torch.Tensor:
    """Cached float16 map rows (C, H, W order) as a float32 NCHW batch in channels-last memory.

    Channels-last is what oneDNN's CPU convolutions want: the top's forward and backward run
    about 30 % faster on it than on the rows' own C, H, W layout (benchmarks/finetune_fmnist).
    """
    return torch.from_numpy(rows.astype(np.float32)).view(-1, *shape).contiguous(
        memory_format=torch.channels_last)


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


def _fit_probe(top: TopNet, maps: CachedMaps, y: np.ndarray, train: np.ndarray, val: np.ndarray,
               opts: FinetuneOptions, test: tuple[CachedMaps, np.ndarray] | None) -> dict:
    """Logistic regression on the frozen top's pooled features; its solution becomes the head."""
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    feats = pooled_features(top, maps.X, maps.shape)
    # standardised, lbfgs converges in a few hundred iterations instead of thousands; the
    # scaling is folded into the head's weights afterwards
    mean, std = feats[train].mean(0), feats[train].std(0) + 1e-6
    Z = (feats - mean) / std
    chosen = None  # (val accuracy, C, model); C from the validation split unless given
    for C in (opts.probe_c,) if opts.probe_c else PROBE_CS:
        candidate = LogisticRegression(C=C, max_iter=500).fit(Z[train], y[train])
        acc = candidate.score(Z[val], y[val])
        if chosen is None or acc > chosen[0]:
            chosen = (acc, C, candidate)
    _, C, clf = chosen
    W = (clf.coef_ / std).astype(np.float32)
    b = (clf.intercept_ - clf.coef_ @ (mean / std)).astype(np.float32)
    if W.shape[0] == 1:  # binary: sigmoid(w.x + b) is softmax over (-(w.x+b)/2, (w.x+b)/2)
        W, b = np.concatenate([-W / 2, W / 2]), np.concatenate([-b / 2, b / 2])
    with torch.no_grad():
        top.classifier.weight.copy_(torch.from_numpy(W))
        top.classifier.bias.copy_(torch.from_numpy(b))
    train_loss, train_acc = _loss_acc(feats[train] @ W.T + b, y[train])
    val_loss, val_acc = _loss_acc(feats[val] @ W.T + b, y[val])
    probe = {"train_accuracy": train_acc, "val_accuracy": val_acc, "val_loss": val_loss,
             "train_loss": train_loss, "C": C,
             "seconds": round(time.perf_counter() - started, 2)}
    if test is not None:
        test_maps, y_test = test
        test_feats = pooled_features(top, test_maps.X, test_maps.shape)
        probe["test_accuracy"] = _loss_acc(test_feats @ W.T + b, y_test)[1]
    log.info("linear probe on the frozen top: val accuracy %.4f%s (%.1f s)", probe["val_accuracy"],
             f", test {probe['test_accuracy']:.4f}" if "test_accuracy" in probe else "",
             probe["seconds"])
    return probe


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
        raise FeaturebankError(f"{path} is not a featurebank fine-tuning checkpoint; delete it "
                               "or write the model elsewhere")
    if ckpt["identity"] != identity:
        diff = sorted(k for k in set(identity) | set(ckpt["identity"])
                      if identity.get(k) != ckpt["identity"].get(k))
        raise FeaturebankError(f"checkpoint {path} is of another run (differs in {diff}); delete "
                               "it to start over, or write the model elsewhere")
    return ckpt


def train_top(maps: CachedMaps, classes: list[str], train: np.ndarray, val: np.ndarray,
              opts: FinetuneOptions, checkpoint: Path, identity: dict,
              test: CachedMaps | None = None, progress: bool = True) -> Trained:
    """Fine-tune the top of ``identity['model']`` above ``maps.spec.layer`` on ``maps``.

    Resumes from ``checkpoint`` when it holds an earlier epoch of the same run.
    """
    if opts.threads:
        torch.set_num_threads(opts.threads)
    model = identity["model"]
    torch.manual_seed(opts.seed)  # the new head's initial weights (then the probe's)
    top, base_sha = build_top(model, maps.spec.layer, len(classes), opts.dropout)
    if base_sha != maps.spec.model.weights_sha256:
        raise FeaturebankError(f"the maps were cut from weights {maps.spec.model.weights_sha256[:12]}"
                               f", {model} has {base_sha[:12]} here; embed them again")
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[c] for c in maps.labels], dtype=np.int64)
    test_y = None if test is None else np.array([index[c] for c in test.labels], dtype=np.int64)
    steps_per_epoch = math.ceil(len(train) / opts.batch_size)
    opt, sched = _optimizer(top, opts, opts.epochs * steps_per_epoch, steps_per_epoch)
    ckpt = _load(checkpoint, identity)
    resumed = None
    if ckpt is None:
        probe = _fit_probe(top, maps, y, train, val, opts,
                           None if test is None else (test, test_y))
        history: list[dict[str, float]] = []
        # the best *fine-tuned* epoch is kept (the exported model is a fine-tuned one); the
        # probe stays beside it in the report as the frozen baseline
        best = {"epoch": 0, "val_accuracy": -1.0, "val_loss": math.inf,
                "state": {k: v.clone() for k, v in top.state_dict().items()}}
        done, stopped = 0, False
        _save(checkpoint, _payload(identity, 0, top, opt, sched, history, best, probe, False))
    else:
        top.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        history, best, probe = ckpt["history"], ckpt["best"], ckpt["probe"]
        done, stopped = int(ckpt["epoch"]), bool(ckpt["stopped"])
        resumed = done
        log.info("resuming from the checkpoint of epoch %d (%s)", done, checkpoint)
    X, shape = maps.X, maps.shape
    for epoch in range(done + 1, opts.epochs + 1):
        if stopped:
            break
        started = time.perf_counter()
        rng = np.random.default_rng([opts.seed, epoch])
        torch.manual_seed(opts.seed * 100_003 + epoch)  # dropout
        order = train[rng.permutation(len(train))]
        mirror = rng.random(len(order)) < 0.5 if maps.flipped is not None else None
        top.train()
        seen, loss_sum, correct = 0, 0.0, 0
        for start in range(0, len(order), opts.batch_size):
            idx = order[start:start + opts.batch_size]
            xb = X[idx]
            if mirror is not None:
                flip = mirror[start:start + opts.batch_size]
                xb = np.where(flip[:, None], maps.flipped[idx], xb)
            xb = as_batch(xb, shape)
            yb = torch.from_numpy(y[idx])
            logits = top(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=opts.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(idx)
            loss_sum += float(loss.item()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            if progress and seen % (opts.batch_size * 50) == 0:
                log.info("  epoch %d: %d/%d maps, loss %.4f", epoch, seen, len(order),
                         loss_sum / seen)
        train_seconds = time.perf_counter() - started
        val_loss, val_acc = _loss_acc(predict_logits(top, X, shape, val), y[val])
        row = {"epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
               "val_loss": val_loss, "val_accuracy": val_acc,
               "train_seconds": round(train_seconds, 3),
               "seconds": round(time.perf_counter() - started, 3)}
        history.append(row)
        if val_acc > best["val_accuracy"] or (val_acc == best["val_accuracy"]
                                              and val_loss < best["val_loss"]):
            best = {"epoch": epoch, "val_accuracy": val_acc, "val_loss": val_loss,
                    "state": {k: v.clone() for k, v in top.state_dict().items()}}
        stopped = opts.patience > 0 and epoch - best["epoch"] >= opts.patience and \
            epoch < opts.epochs
        _save(checkpoint, _payload(identity, epoch, top, opt, sched, history, best, probe, stopped))
        log.info("epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1f s%s",
                 epoch, opts.epochs, row["train_loss"], row["train_accuracy"], val_loss, val_acc,
                 row["seconds"], " | early stop" if stopped else "")
    top.load_state_dict(best["state"])
    top.eval()
    return Trained(top, history, int(best["epoch"]), float(best["val_accuracy"]), probe, base_sha,
                   resumed, stopped)


def _payload(identity, epoch, top: nn.Module, opt, sched, history, best, probe, stopped) -> dict:
    return {"format": CHECKPOINT_FORMAT, "identity": identity, "epoch": epoch,
            "model": top.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "history": history, "best": best, "probe": probe,
            "stopped": stopped}
