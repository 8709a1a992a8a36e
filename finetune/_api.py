"""``finetune()``: cached maps in, a tuned classifier out (the second recipe of transfer
learning, on a CPU)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from featurebank.errors import FeaturebankError
from featurebank.finetune._data import (
    CachedMaps,
    base_onnx,
    check_labels,
    cut_spec,
    ensure_flipped,
    ensure_maps,
    load_maps,
    stratified_split,
)
from featurebank.finetune._inputs import open_collection
from featurebank.finetune._options import FinetuneOptions
from featurebank.options import check_names
from featurebank.paths import check_folder, check_writable

log = logging.getLogger(__name__)


def data_fingerprint(maps: CachedMaps) -> str:
    """16 hex digits naming a training set: the maps' spec and every (content key, label)."""
    h = hashlib.sha256(maps.fingerprint.encode())
    for key, label in sorted(zip(maps.keys.tolist(), maps.labels.tolist(), strict=True)):
        h.update(f"{key}\t{label}\n".encode())
    return h.hexdigest()[:16]


@dataclass(kw_only=True)
class FinetuneResult:
    """A finished fine-tune: curves, best epoch, the choice against the probe, the model to export.

    ``trained`` holds the main training (``history``: one row per epoch; ``probe``: the frozen
    linear probe's figures on the same split), the probe as a model, and ``choice``: which of
    the two the run answers with, and why (see docs/finetune.md). ``stores`` names where the
    maps are (``train``, ``test``, ``train_flipped``); ``checkpoint`` is removed by
    :meth:`export` unless the options keep it.
    """

    model: str
    layer: str
    classes: list[str]
    options: FinetuneOptions
    trained: Any  # featurebank.finetune._choice.Trained (torch)
    train_fingerprint: str
    train_images: int
    stores: dict[str, Path]
    test_accuracy: float | None = None  # the fine-tuned model's; the probe's is in ``probe``
    checkpoint: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    exported: Path | None = None
    #: training images left out on purpose (``--exclude``), recorded in the tuned file
    excluded_keys: list[str] = field(default_factory=list)
    report: Path | None = None  # written once, by export (it records the file and its time)

    # the main training's figures, read where they live
    history = property(lambda self: self.trained.main.history)
    best_epoch = property(lambda self: self.trained.main.best_epoch)
    val_accuracy = property(lambda self: self.trained.main.best_val_accuracy)
    probe = property(lambda self: self.trained.main.probe)
    top = property(lambda self: self.trained.main.top)  # the fine-tuned top, best epoch
    resumed_from = property(lambda self: self.trained.main.resumed_from)
    stopped_early = property(lambda self: self.trained.main.stopped_early)
    base_sha256 = property(lambda self: self.trained.base_sha256)
    choice = property(lambda self: self.trained.choice)
    chosen = property(lambda self: self.trained.choice["chosen"])  # "finetuned" or "probe"
    train_store = property(lambda self: self.stores["train"])
    test_store = property(lambda self: self.stores.get("test"))

    @property
    def chosen_test_accuracy(self) -> float | None:
        """The test accuracy of the model the run answers with (the exported one)."""
        return self.test_accuracy if self.chosen == "finetuned" else self.probe.get("test_accuracy")

    def lineage(self) -> dict[str, Any]:
        choice = {k: v for k, v in self.choice.items() if k != "per_fold"}
        return {"base_model": self.model, "base_weights_sha256": self.base_sha256,
                "base_weights_file": self.options.weights,
                "from_layer": self.layer, "classes": self.classes,
                "train_feature_set": self.train_fingerprint, "train_images": self.train_images,
                "chosen": self.chosen,
                "choice": choice, "best_epoch": self.best_epoch,
                "val_accuracy": self.val_accuracy, "test_accuracy": self.test_accuracy,
                "probe_val_accuracy": self.probe.get("val_accuracy"),
                "probe_test_accuracy": self.probe.get("test_accuracy"),
                "options": self.options.to_dict(), "excluded_keys": self.excluded_keys}

    def torch_model(self, which: str | None = None):
        """The whole classifier as an eval-mode torch module (``features(x)``): the chosen
        one, or ``which`` (``"finetuned"`` or ``"probe"``)."""
        from featurebank.finetune._top import assemble

        which = which or self.chosen
        return assemble(self.model, self.top if which == "finetuned" else self.trained.probe_top,
                        weights=self.options.weights)

    def export(self, path: str | Path) -> Path:
        """Write the chosen model as a self-describing ONNX classifier (original trunk, then
        the tuned top and head, or the frozen top and the probe's head); then remove the
        checkpoint unless ``options.keep_checkpoint``."""
        from featurebank.export import read_onnx_metadata
        from featurebank.finetune._export import export_tuned

        path = Path(path)
        started = time.perf_counter()
        base_spec = read_onnx_metadata(base_onnx(self.model, self.options.input_size,
                                                 self.options.weights)).spec
        export_tuned(self.torch_model(), path, base_spec, self.lineage(), self.options.tta_flip)
        self.seconds["export"] = round(time.perf_counter() - started, 2)
        self.exported = path
        if self.checkpoint is not None and not self.options.keep_checkpoint:
            self.checkpoint.unlink(missing_ok=True)
        if self.report is not None:
            from featurebank.finetune._report import write_report

            write_report(self, self.report)
        # debug: the command line prints this line itself, as its last (said once)
        log.debug("wrote %s (%s from %s, %d classes): %s", path, self.model, self.layer,
                 len(self.classes), self.conclusion())
        return path

    def conclusion(self) -> str:
        """One line: which model the file holds, and why."""
        what = "the fine-tuned model" if self.chosen == "finetuned" else "the frozen linear probe"
        return f"{what} ({self.choice['reason']})"

    def summary(self) -> dict[str, Any]:
        return {**self.lineage(), "choice": self.choice, "history": self.history,
                "probe": self.probe, "resumed_from": self.resumed_from,
                "stopped_early": self.stopped_early, "seconds": self.seconds,
                "stores": {k: str(v) for k, v in self.stores.items()},
                "model_file": str(self.exported) if self.exported else None}


def finetune(train: str | Path, *, model: str = "efficientnet_lite0", from_layer: str = "blocks.12",
             test: str | Path | None = None, output: str | Path = "tuned.onnx",
             report: str | Path | None = None, options: FinetuneOptions | None = None,
             work_dir: str | Path | None = None, progress: bool = True,
             embed_batch_size: int = 32, exclude: Iterable[str] = (),
             **option_fields: Any) -> FinetuneResult:
    """Fine-tune the layers of ``model`` above ``from_layer`` on labelled images.

    Parameters
    ----------
    train : path
        A folder of images (one sub-folder per class), or a store already holding the maps.
        The run trains on exactly these images (selected by content), whatever else a store
        holds.
    model : str
        A registry EfficientNet-Lite (``efficientnet_lite0``, ...).
    from_layer : str
        The cut ``blocks.N``: layers up to it stay frozen and run once per image; the blocks
        after it, the head conv/BN and a new linear head are trained.
    test : path, optional
        Held-out folder or store, scored with the best epoch and the frozen probe.
    output : path
        Where :meth:`FinetuneResult.export` will write; the checkpoint (``OUTPUT.ckpt``) is
        kept beside it while the run is unfinished.
    report : path, optional
        Folder for ``finetune.json`` and ``curves.png``, written once by
        :meth:`FinetuneResult.export` (the report names the file and its export time).
    options : FinetuneOptions, optional
        Training options; ``option_fields`` (its field names: ``epochs``, ``val_size``, ``seed``,
        ``flip``, ``lr_head``, ``lr_top``, ``batch_size``, ...) replace its fields.
    work_dir : path, optional
        Where a folder's maps are cached (default: ``maps/`` in featurebank's cache folder,
        ``$FEATUREBANK_CACHE`` or ``~/.cache/featurebank``).
    exclude : iterable of str
        Content keys of training images to leave out
        (:func:`featurebank.classical.read_exclusions`, ``--exclude``); those of ``train`` are
        recorded in the result's lineage (and the tuned file).

    Returns
    -------
    FinetuneResult
        Not yet exported: call ``result.export(path)``.
    """
    check_names("finetune", option_fields, FinetuneOptions)
    opts = (options or FinetuneOptions()).replace(**option_fields)
    output = Path(output)
    _check_paths(train, test, output)
    if report is not None:
        check_folder(report)
    # refuses a bad model or cut before any file
    spec, shape = cut_spec(model, from_layer, opts.input_size, opts.weights)
    timings: dict[str, float] = {}
    maps, test_maps, stores, excluded = _cached_maps(
        train, test, spec, shape, opts, work_dir, progress, embed_batch_size, timings,
        frozenset(exclude))
    classes = check_labels(maps)
    if test_maps is not None:
        check_labels(test_maps, classes)
    tr, val = stratified_split(maps.labels, opts.val_size, opts.seed)
    fingerprint = data_fingerprint(maps)
    identity = {"model": model, "layer": from_layer, "weights": spec.model.weights_sha256,
                "train_feature_set": fingerprint, "classes": classes,
                "options": opts.training_identity()}
    log.info("fine-tuning %s above %s: %d training maps %s (%d train / %d val), %d classes",
             model, from_layer, len(maps.X), shape, len(tr), len(val), len(classes))
    from featurebank.finetune._choice import train_top
    from featurebank.finetune._train import Checkpoint, prepare

    started = time.perf_counter()
    setup, base_sha = prepare(maps, classes, model, opts, progress)
    checkpoint = Checkpoint(output.with_name(output.name + ".ckpt"), identity)
    trained = train_top(setup, base_sha, tr, val, checkpoint)
    timings["train"] = round(time.perf_counter() - started, 2)
    return FinetuneResult(model=model, layer=from_layer, classes=classes, options=opts,
                          trained=trained, train_fingerprint=fingerprint,
                          train_images=len(maps.X), stores=stores,
                          test_accuracy=_score_test(trained, test_maps, classes),
                          checkpoint=checkpoint.path, seconds=timings, excluded_keys=excluded,
                          report=Path(report) if report is not None else None)


def _check_paths(train: str | Path, test: str | Path | None, output: Path) -> None:
    """The inputs exist and the output can be written: refused before any work."""
    check_writable(output, suffix=".onnx")
    for name, src in (("train", train), ("test", test)):
        if src is not None and not Path(src).exists():
            raise FeaturebankError(f"finetune {name} input {src} does not exist")


def _cached_maps(train: str | Path, test: str | Path | None, spec: Any, shape: Any,
                 opts: FinetuneOptions, work_dir: str | Path | None, progress: bool,
                 batch_size: int, timings: dict[str, float], exclude: frozenset[str],
                 ) -> tuple[CachedMaps, CachedMaps | None, dict[str, Path], list[str]]:
    """The training (and test) maps, embedded into their stores first where missing, and the
    training keys left out (``exclude``); both inputs are read and checked before anything is
    embedded or written."""
    train_set, excluded = _leave_out(open_collection(train, "train", spec, work_dir), exclude)
    test_set = None if test is None else open_collection(test, "test", spec, work_dir)
    started = time.perf_counter()
    for collection in (train_set, test_set):
        if collection is not None:
            ensure_maps(collection, spec, batch_size, progress, opts.weights)
    if opts.flip:
        ensure_flipped(train_set, spec, batch_size, progress, opts.weights)
    timings["embed"] = round(time.perf_counter() - started, 2)
    stores = {"train": train_set.store}
    if opts.flip:
        stores["train_flipped"] = train_set.flip_store
    if test_set is not None:
        stores["test"] = test_set.store
    return (load_maps(train_set, spec, shape, flipped=opts.flip),
            None if test_set is None else load_maps(test_set, spec, shape), stores, excluded)


def _score_test(trained: Any, test_maps: CachedMaps | None, classes: list[str]) -> float | None:
    """The fine-tuned top's test accuracy (the probe's goes into its figures), or None."""
    if test_maps is None:
        return None
    index = {c: i for i, c in enumerate(classes)}
    y_test = np.array([index[c] for c in test_maps.labels])
    accuracy = _accuracy(trained.main.top, test_maps, y_test)
    trained.main.probe["test_accuracy"] = _accuracy(trained.probe_top, test_maps, y_test)
    log.info("test accuracy %.4f (frozen linear probe %.4f) on %d images", accuracy,
             trained.main.probe["test_accuracy"], len(y_test))
    return accuracy


def _leave_out(collection, exclude: frozenset[str]) -> tuple[Any, list[str]]:
    """The collection less its images whose content key is excluded, and their keys."""
    if not exclude:
        return collection, []
    drop = np.array([k in exclude for k in collection.keys], dtype=bool)
    if drop.all():
        raise FeaturebankError(f"exclude leaves out all {len(drop)} training images of "
                               f"{collection.source}; nothing is left to train on")
    keep = np.flatnonzero(~drop)
    kept = replace(collection, keys=collection.keys[keep], labels=collection.labels[keep],
                   paths=[collection.paths[i] for i in keep])
    return kept, sorted(str(k) for k in collection.keys[drop])


def _accuracy(top, maps: CachedMaps, y: np.ndarray) -> float:
    from featurebank.finetune._train import predict_logits

    return float((predict_logits(top, maps.X, maps.shape).argmax(1) == y).mean())
