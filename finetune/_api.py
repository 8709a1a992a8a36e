"""``finetune()``: cached maps in, a tuned classifier out (the second recipe of transfer
learning, on a CPU)."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featurebank.errors import FeaturebankError
from featurebank.finetune._data import (
    CachedMaps,
    check_labels,
    cut_spec,
    ensure_flipped,
    ensure_store,
    load_maps,
    stratified_split,
)
from featurebank.finetune._options import FinetuneOptions

log = logging.getLogger(__name__)


def data_fingerprint(maps: CachedMaps) -> str:
    """16 hex digits naming a training set: the maps' spec and every (content key, label)."""
    h = hashlib.sha256(maps.fingerprint.encode())
    for key, label in sorted(zip(maps.keys.tolist(), maps.labels.tolist(), strict=True)):
        h.update(f"{key}\t{label}\n".encode())
    return h.hexdigest()[:16]


@dataclass
class FinetuneResult:
    """A finished fine-tune: curves, best epoch, accuracies, and the model to export.

    ``history`` has one row per epoch (train/val loss and accuracy, seconds); ``probe`` the
    frozen linear probe's figures on the same split (the head's starting point).
    """

    model: str
    layer: str
    classes: list[str]
    history: list[dict[str, float]]
    best_epoch: int
    val_accuracy: float
    test_accuracy: float | None
    probe: dict[str, Any]
    options: FinetuneOptions
    train_fingerprint: str
    train_store: Path
    test_store: Path | None
    base_sha256: str
    resumed_from: int | None = None
    stopped_early: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    top: Any = None  # the tuned TopNet (torch), best epoch's weights
    exported: Path | None = None

    def lineage(self) -> dict[str, Any]:
        return {"base_model": self.model, "base_weights_sha256": self.base_sha256,
                "from_layer": self.layer, "classes": self.classes,
                "train_feature_set": self.train_fingerprint, "best_epoch": self.best_epoch,
                "val_accuracy": self.val_accuracy, "test_accuracy": self.test_accuracy,
                "probe_val_accuracy": self.probe.get("val_accuracy"),
                "probe_test_accuracy": self.probe.get("test_accuracy"),
                "options": self.options.to_dict()}

    def torch_model(self):
        """The whole tuned classifier as an eval-mode torch module (``features(x)``)."""
        from featurebank.finetune._top import assemble

        return assemble(self.model, self.top)

    def export(self, path: str | Path) -> Path:
        """Write the self-describing ONNX classifier (original trunk, tuned top, new head)."""
        from featurebank.export import read_onnx_metadata
        from featurebank.extractor import resolve_model_path
        from featurebank.finetune._export import export_tuned

        path = Path(path)
        started = time.perf_counter()
        base_spec = read_onnx_metadata(resolve_model_path(self.model)).spec
        export_tuned(self.torch_model(), path, base_spec, self.lineage())
        self.seconds["export"] = round(time.perf_counter() - started, 2)
        self.exported = path
        log.info("wrote %s (%s from %s, %d classes)", path, self.model, self.layer,
                 len(self.classes))
        return path

    def summary(self) -> dict[str, Any]:
        return {**self.lineage(), "history": self.history, "probe": self.probe,
                "resumed_from": self.resumed_from, "stopped_early": self.stopped_early,
                "seconds": self.seconds, "train_store": str(self.train_store),
                "test_store": str(self.test_store) if self.test_store else None,
                "model_file": str(self.exported) if self.exported else None}


def finetune(train: str | Path, *, model: str = "efficientnet_lite0", from_layer: str = "blocks.12",
             test: str | Path | None = None, output: str | Path = "tuned.onnx",
             report: str | Path | None = None, options: FinetuneOptions | None = None,
             progress: bool = True, embed_batch_size: int = 32, **option_fields: Any
             ) -> FinetuneResult:
    """Fine-tune the layers of ``model`` above ``from_layer`` on labelled images.

    Parameters
    ----------
    train : path
        A folder of images (one sub-folder per class), embedded once into
        ``<output folder>/<name>.train.h5``, or a store already holding the maps.
    model : str
        A registry EfficientNet-Lite (``efficientnet_lite0``, ...).
    from_layer : str
        The cut ``blocks.N``: layers up to it stay frozen and run once per image; the blocks
        after it, the head conv/BN and a new linear head are trained.
    test : path, optional
        Held-out folder or store, scored with the best epoch (and the frozen probe).
    output : path
        Where :meth:`FinetuneResult.export` will write; the checkpoint
        (``OUTPUT.ckpt``) and embedded stores go beside it.
    report : path, optional
        Folder for ``finetune.json`` and ``curves.png``.
    options : FinetuneOptions, optional
        Training options; ``option_fields`` (its field names: ``epochs``, ``val_size``, ``seed``,
        ``flip``, ``lr_head``, ``lr_top``, ``batch_size``, ...) replace its fields.

    Returns
    -------
    FinetuneResult
        Not yet exported: call ``result.export(path)``.
    """
    unknown = set(option_fields) - set(FinetuneOptions.__dataclass_fields__)
    if unknown:
        raise FeaturebankError(f"finetune: unknown option(s) {sorted(unknown)}; known: "
                               f"{sorted(FinetuneOptions.__dataclass_fields__)}")
    opts = (options or FinetuneOptions()).replace(**option_fields)
    output = Path(output)
    if not output.parent.is_dir():
        raise FeaturebankError(f"cannot write {output}: {output.parent} does not exist")
    for name, src in (("train", train), ("test", test)):
        if src is not None and not Path(src).exists():
            raise FeaturebankError(f"finetune {name} input {src} does not exist")
    spec, shape = cut_spec(model, from_layer)  # refuses a bad model or cut before any file
    timings: dict[str, float] = {}
    started = time.perf_counter()
    train_store = ensure_store(train, output.parent, "train", spec, embed_batch_size, progress)
    test_store = None if test is None else ensure_store(test, output.parent, "test", spec,
                                                        embed_batch_size, progress)
    flip_store = ensure_flipped(train_store, spec, embed_batch_size, progress) if opts.flip else None
    timings["embed"] = round(time.perf_counter() - started, 2)
    maps = load_maps(train_store, spec, shape, flip_store)
    classes = check_labels(maps)
    test_maps = None
    if test_store is not None:
        test_maps = load_maps(test_store, spec, shape)
        check_labels(test_maps, classes)
    tr, val = stratified_split(maps.labels, opts.val_size, opts.seed)
    fingerprint = data_fingerprint(maps)
    identity = {"model": model, "layer": from_layer, "weights": spec.model.weights_sha256,
                "train_feature_set": fingerprint, "classes": classes,
                "test_feature_set": None if test_maps is None else data_fingerprint(test_maps),
                "options": opts.training_identity()}
    log.info("fine-tuning %s above %s: %d training maps %s (%d train / %d val), %d classes",
             model, from_layer, len(maps.X), shape, len(tr), len(val), len(classes))
    from featurebank.finetune._train import predict_logits, train_top

    started = time.perf_counter()
    trained = train_top(maps, classes, tr, val, opts, output.with_name(output.name + ".ckpt"),
                        identity, test=test_maps, progress=progress)
    timings["train"] = round(time.perf_counter() - started, 2)
    test_acc = None
    if test_maps is not None:
        index = {c: i for i, c in enumerate(classes)}
        y_test = np.array([index[c] for c in test_maps.labels])
        test_acc = float((predict_logits(trained.top, test_maps.X, shape).argmax(1) == y_test).mean())
        log.info("test accuracy %.4f (frozen linear probe %.4f) on %d images", test_acc,
                 trained.probe.get("test_accuracy", float("nan")), len(y_test))
    result = FinetuneResult(model, from_layer, classes, trained.history, trained.best_epoch,
                            trained.best_val_accuracy, test_acc, trained.probe, opts, fingerprint,
                            train_store, test_store, trained.base_sha256, trained.resumed_from,
                            trained.stopped_early, timings, trained.top)
    if report is not None:
        from featurebank.finetune._report import write_report

        write_report(result, Path(report))
    return result
