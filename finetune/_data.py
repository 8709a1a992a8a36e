"""The cached maps: embed a folder once into a store (and its flipped copies), read them back
checked against the model and cut asked for, and split them (no torch here).

The maps are the trunk's output at the cut, unpooled (``pool='none'``: the C*H*W map flattened
in C, H, W order) and float16, in an ordinary feature store: incremental and crash-safe like
any feature set, so a killed embedding resumes where it stopped. Flipped copies live in a
second store beside it (``FINGERPRINT.hflip.h5``), keyed by the same content keys: their vectors
are those of the mirrored image, so they must never sit in a feature set of the same spec.
Which rows belong to a run, and where the stores are, is ``_inputs``' business.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from featurebank.errors import FeaturebankError, OptionError
from featurebank.spec import FeatureSpec

if TYPE_CHECKING:  # _inputs opens collections with this module's store check
    from featurebank.finetune._inputs import Collection

log = logging.getLogger(__name__)


@dataclass
class CachedMaps:
    """Rows of one unpooled feature set: maps float16 ``[N, C*H*W]``, labels, content keys."""

    X: np.ndarray
    labels: np.ndarray
    keys: np.ndarray
    spec: FeatureSpec
    shape: tuple[int, int, int]
    store: Path
    flipped: np.ndarray | None = None  # the same rows' mirrored maps

    @property
    def fingerprint(self) -> str:
        return self.spec.fingerprint()


def refuse_onnx(model: str) -> None:
    """Refuse an ONNX file as a fine-tuning base, saying what works instead."""
    from featurebank.export import is_onnx_path

    if is_onnx_path(str(model)):
        raise OptionError(
            "model", f"{model!r} is an ONNX file: it has no torch code to train; "
            f"{_instead(model)}", owner="finetune")


def _instead(model: str) -> str:
    """What fine-tunes the network of an ONNX file: for a featurebank export of a registry,
    timm or torchvision model, the exact parameters (its source name, ``weights`` and the
    weights digest the file records); otherwise the kinds of model that can be fine-tuned."""
    from featurebank.export import read_onnx_metadata

    generic = ("give a registry model (efficientnet_lite0/1/2), timm:NAME or torchvision:NAME "
               "(with weights=FILE for your own weights), or train a classifier on its features "
               "('featurebank train')")
    try:
        info = read_onnx_metadata(model)
    except FeaturebankError:
        return generic
    spec = info.spec
    if spec is None or spec.source not in ("featurebank", "timm", "torchvision"):
        return generic
    h, w = spec.preprocessing.input_size
    library = (info.transform or {}).get("kind") == "library"
    digest = spec.weights_sha256
    whose = ("the library's own download: that digest is of its tensors, not of a file, so "
             "leave weights=FILE out to use the library's weights again" if library else
             "the SHA-256 of the state-dict file given at export ('sha256sum FILE' shows it); "
             "for the library's own download it is the digest of its tensors, not of a file, "
             "and weights=FILE is left out")
    size = f", input_size={h}" if h == w else ""
    return (f"it was exported from {spec.model}, so fine-tune that network: "
            f"model={spec.model!r}, weights=STATE_DICT.pth{size}, where STATE_DICT.pth holds the "
            f"weights whose digest the file records, {digest[:16]}... ({whose})")


def base_onnx(model: str, input_size: int | None = None, weights: str | None = None) -> Path:
    """The ONNX export the maps are cut from: the model's cached export, with the local state
    dict ``weights`` when given (the cache keys it by content)."""
    from featurebank.export import ensure_exported
    from featurebank.extractor import resolve_model_path

    if weights is None:
        return resolve_model_path(model, input_size)
    if not Path(weights).is_file():
        raise OptionError("weights", f"{str(weights)!r}: no such file (give the state dict of "
                          f"{model} saved with torch.save(model.state_dict(), FILE))",
                          owner="FinetuneOptions")
    return ensure_exported(model, input_size=input_size, weights=weights)


def cut_spec(model: str, layer: str, input_size: int | None = None, weights: str | None = None
             ) -> tuple[FeatureSpec, tuple[int, int, int]]:
    """The spec of the maps a fine-tune from ``layer`` of ``model`` (exported at
    ``input_size``, default its own, with the state dict ``weights``, default the pretrained
    one) needs, and their shape.

    Refuses an ONNX file (no torch code to train) and a cut that is not a ``blocks.K`` or
    ``stage.K`` of the model's catalogue; whether the layers above it split off as a chain is
    checked when the top is built.
    """
    from featurebank.export import read_onnx_metadata

    refuse_onnx(model)
    path = base_onnx(model, input_size, weights)
    info = read_onnx_metadata(path)
    families = [[la.name for la in info.layers if la.name.startswith(prefix)]
                for prefix in ("blocks.", "stage.")]
    if not any(layer in names for names in families):
        ranges = " or ".join(f"{names[0]} .. {names[-1]}" for names in families if names)
        raise OptionError("from_layer", f"{layer!r}: cut at one of "
                          f"{ranges or 'its blocks/stages (it lists none)'} of {model} "
                          f"(the layers above it are trained)", owner="finetune")
    shape = tuple(int(v) for v in info.layer(layer).shape)
    spec = _extractor(model, layer, input_size, weights).specs[0]
    return spec, shape  # type: ignore[return-value]


def _extractor(model: str, layer: str, input_size: int | None, weights: str | None,
               cls: type | None = None, batch_size: int = 32):
    """The unpooled extractor of the cut: by registry name, or on the export with ``weights``."""
    from featurebank.extractor import Extractor

    cls = cls or Extractor
    if weights is None:
        return cls(model, layers=(layer,), pool="none", input_size=input_size,
                   batch_size=batch_size)
    return cls(str(base_onnx(model, input_size, weights)), layers=(layer,), pool="none",
               batch_size=batch_size)


def ensure_maps(collection: Collection, spec: FeatureSpec, batch_size: int = 32,
                progress: bool = True, weights: str | None = None) -> None:
    """Embed the images of a folder collection into its cache store (only new content)."""
    if not collection.is_folder:
        return  # a store given holds its maps already (checked when it was opened)
    _embed([str(collection.source)], collection.store, spec, batch_size, progress, flip=False,
           weights=weights)
    check_store(collection.store, spec)


def ensure_flipped(collection: Collection, spec: FeatureSpec, batch_size: int = 32,
                   progress: bool = True, weights: str | None = None) -> None:
    """The mirrored maps of every image of ``collection`` in its flip store (only new content)."""
    _embed(sorted(set(collection.paths)), collection.flip_store, spec, batch_size, progress,
           flip=True, weights=weights)


def _embed(inputs: list[str], store: Path, spec: FeatureSpec, batch_size: int, progress: bool,
           flip: bool, weights: str | None = None) -> None:
    from featurebank.extractor import EmbedRun, embed_collection

    store.parent.mkdir(parents=True, exist_ok=True)
    ex = _extractor(spec.model.model, spec.layer, spec.model.preprocessing.input_size[0], weights,
                    cls=_flipped_extractor_class() if flip else None, batch_size=batch_size)
    if ex.specs[0].fingerprint() != spec.fingerprint():
        raise FeaturebankError(f"the extractor computes {ex.specs[0].describe()}, not "
                               f"{spec.describe()}; the model cache changed under the run")
    summary = embed_collection(inputs, store, extractor=ex,
                               run=EmbedRun(batch_size=batch_size, dtype="float16",
                                            progress=progress))
    if flip:  # mirrored images are given as files, without their class folders' labels
        summary.labels = {}
    log.info("%s%s: %s", store.name, " (mirrored)" if flip else "", summary)


def _flipped_extractor_class():  # a factory: the extractor module loads lazily
    from featurebank.extractor import Extractor

    class FlippedExtractor(Extractor):
        """The same cut, computed on the horizontally mirrored image (NHWC: axis 2)."""

        def embed_pixels(self, pixels: np.ndarray) -> list[np.ndarray]:
            return super().embed_pixels(np.ascontiguousarray(np.asarray(pixels)[:, :, ::-1]))

    return FlippedExtractor


def check_store(store: Path, spec: FeatureSpec) -> None:
    """Refuse a store that has no maps of ``spec``, naming what it holds instead."""
    from featurebank.extractor import FeatureStore

    sets = FeatureStore(store).feature_sets()
    if any(s.fingerprint == spec.fingerprint() for s in sets):
        return
    held = "; ".join(s.spec.describe() for s in sets) or "no feature set"
    near = [s.spec for s in sets if s.spec.pool == "none"]
    why = ""
    for other in near:
        if other.model.model != spec.model.model:
            why = f" (maps of model {other.model.model}, not {spec.model.model})"
        elif other.model.weights_sha256 != spec.model.weights_sha256:
            why = (f" (maps of other weights: {other.model.weights_sha256[:12]}, not "
                   f"{spec.model.weights_sha256[:12]})")
        elif other.layer != spec.layer:
            why = f" (maps cut at {other.layer}, not {spec.layer})"
        if why:
            break
    raise FeaturebankError(
        f"store {store} holds no unpooled maps of {spec.describe()}{why}; it has: {held}. "
        f"Fine-tune with the model and cut the maps were made with, or embed them with "
        f"'featurebank embed ... --model {spec.model.model} --layer {spec.layer} --pool none'")


def load_maps(collection: Collection, spec: FeatureSpec, shape: tuple[int, int, int],
              flipped: bool = False) -> CachedMaps:
    """The maps of exactly ``collection``'s images, selected by content key from its store
    (float16, never widened: 60k maps of ``blocks.12`` are 1.1 GB so), with the labels the
    collection gives them, and their mirrored copies with ``flipped``."""
    from featurebank.extractor import FeatureStore

    check_store(collection.store, spec)
    fp = spec.fingerprint()
    index = FeatureStore(collection.store).key_index(fp)
    have = np.array([k in index for k in collection.keys], dtype=bool)
    if not have.all():  # unreadable images: the embedding recorded them as failures
        log.warning("%s: %d of %d images have no map (unreadable?); they are left out",
                    collection.source, int((~have).sum()), len(have))
    keys, labels = collection.keys[have], collection.labels[have]
    with h5py.File(collection.store, "r", locking=False) as f:
        g = f["features"][fp]
        row_shape = tuple(int(v) for v in g.attrs.get("row_shape", ()))
        X = read_rows(g["X"], np.array([index[k] for k in keys], dtype=np.int64))
    if X.shape[1] != int(np.prod(shape)) or row_shape not in ((), shape, (X.shape[1],)):
        raise FeaturebankError(f"store {collection.store}: maps of {X.shape[1]} values (row "
                               f"shape {list(row_shape)}), the cut {spec.layer} has shape "
                               f"{list(shape)}; the store is from another model")
    maps = CachedMaps(X, labels, keys, spec, shape, collection.store)
    if flipped:
        flip = FeatureStore(collection.flip_store)
        index = flip.key_index(fp)
        have = np.array([k in index for k in keys], dtype=bool)
        mirrored = X.copy()  # an image without a mirrored map trains on its own map
        if have.any():
            with h5py.File(collection.flip_store, "r", locking=False) as f:
                mirrored[have] = read_rows(f["features"][fp]["X"],
                                           np.array([index[k] for k in keys[have]]))
        if not have.all():
            log.warning("%d of %d images have no mirrored map (unreadable now?); they train "
                        "unflipped", int((~have).sum()), len(keys))
        maps.flipped = mirrored
    return maps


def read_rows(dataset: h5py.Dataset, rows: np.ndarray, block: int = 4096) -> np.ndarray:
    """``dataset[rows]`` as float16, in the order asked, reading contiguous blocks (h5py's own
    fancy indexing is slow and wants sorted rows; widening would double 1.1 GB)."""
    out = np.empty((len(rows), dataset.shape[1]), np.float16)
    if not len(rows):
        return out
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    for start in range(0, len(rows), block):
        chunk = sorted_rows[start:start + block]
        lo, hi = int(chunk[0]), int(chunk[-1]) + 1
        out[order[start:start + block]] = np.asarray(dataset[lo:hi], np.float16)[chunk - lo]
    return out


def stratified_split(labels: np.ndarray, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, validation), stratified by class and fixed by ``seed``."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    n_classes = len(set(labels.tolist()))
    if round(val_size * len(labels)) < n_classes:
        raise OptionError("val_size", f"{val_size} of {len(labels)} images leaves fewer "
                          f"validation images than classes ({n_classes}); raise it",
                          owner="FinetuneOptions")
    train, val = train_test_split(idx, test_size=val_size, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(val)


def check_labels(maps: CachedMaps, classes: list[str] | None = None) -> list[str]:
    """The sorted class names; refuses unlabelled rows, single-image classes and (for a test
    store, given the training ``classes``) classes the model was not trained on."""
    unlabelled = int((maps.labels == "").sum())
    if unlabelled:
        raise FeaturebankError(f"store {maps.store}: {unlabelled} images have no label; "
                               "fine-tuning needs one sub-folder per class")
    if len(maps.labels) == 0:
        raise FeaturebankError(f"store {maps.store} holds no maps of {maps.spec.describe()}")
    found, counts = np.unique(maps.labels, return_counts=True)
    if classes is None:
        if len(found) < 2:
            raise FeaturebankError(f"store {maps.store}: one class only ({found[0]}); "
                                   "fine-tuning needs at least two")
        few = [str(c) for c, k in zip(found, counts, strict=True) if k < 2]
        if few:
            raise FeaturebankError(f"store {maps.store}: classes {few} have a single image; "
                                   "the stratified validation split needs two per class")
        return [str(c) for c in found]
    unknown = sorted(set(found.tolist()) - set(classes))
    if unknown:
        raise FeaturebankError(f"test store {maps.store} has classes the training set lacks: "
                               f"{unknown}")
    return list(classes)
