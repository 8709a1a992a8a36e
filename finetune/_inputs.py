"""Which images a run trains on: exactly those of its own inputs, and where their maps are kept.

A run's rows are selected by the content keys (SHA-256 of the bytes) of the images it was
given, with the labels its own input gives them, whatever else a store holds: a store shared
with another collection (or an older state of the same folder) never lends a row or a label.

The maps of a folder are cached in featurebank's cache folder (``$FEATUREBANK_CACHE``, else
``~/.cache/featurebank``) under ``maps/``, or under ``--work-dir``: one folder per collection,
named after the folder and keyed by its absolute path, one store per spec in it::

    maps/<folder name>-<sha256(absolute path)[:12]>/<spec fingerprint>.h5        plain maps
    maps/<folder name>-<sha256(absolute path)[:12]>/<spec fingerprint>.hflip.h5  mirrored

Nothing goes beside the output or into the working directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurebank.errors import FeaturebankError
from featurebank.spec import FeatureSpec

log = logging.getLogger(__name__)
MAPS_FOLDER = "maps"
FLIP_SUFFIX = ".hflip.h5"


@dataclass
class Collection:
    """One input of a run: its images' content keys, labels and paths, and its maps' stores.

    ``keys`` are unique; ``labels[i]`` and ``paths[i]`` belong to ``keys[i]``. ``store`` holds
    the plain maps (the store given, or the collection's cache store); ``flip_store`` is where
    the mirrored maps go (always in the cache folder or the work directory).
    """

    source: Path
    keys: np.ndarray
    labels: np.ndarray
    paths: list[str]
    store: Path
    flip_store: Path

    @property
    def is_folder(self) -> bool:
        return self.source.is_dir()


def maps_root(work_dir: str | Path | None = None) -> Path:
    """``work_dir``, else the ``maps`` folder of featurebank's cache."""
    if work_dir is not None:
        return Path(work_dir)
    from featurebank.export import cache_dir

    return cache_dir() / MAPS_FOLDER


def collection_folder(source: str | Path, work_dir: str | Path | None = None) -> Path:
    """The cache folder of one collection: its name and a digest of its absolute path."""
    absolute = os.path.abspath(source)
    digest = hashlib.sha256(absolute.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return maps_root(work_dir) / f"{Path(absolute).name}-{digest}"


def open_collection(source: str | Path, role: str, spec: FeatureSpec,
                    work_dir: str | Path | None = None) -> Collection:
    """The images of ``source`` (a folder with one sub-folder per class, or a store holding
    ``spec``'s maps), keyed by content, and where their maps are or will be.

    Rows come in content-key order, whichever way the images are given, so the same images
    split and train alike from a folder or from its store."""
    source = Path(source)
    folder = collection_folder(source, work_dir)
    flip_store = folder / (spec.fingerprint() + FLIP_SUFFIX)
    if source.is_file():
        from featurebank.finetune._data import check_store

        check_store(source, spec)
        keys, labels, paths = _store_images(source, spec)
        return Collection(source, keys, labels, paths, source, flip_store)
    if not source.is_dir():
        raise FeaturebankError(f"finetune {role} input {source} is neither a folder of images "
                               "(one sub-folder per class) nor a feature store")
    keys, labels, paths = _folder_images(source)
    return Collection(source, keys, labels, paths, folder / f"{spec.fingerprint()}.h5", flip_store)


def _folder_images(source: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Content key, label (the class sub-folder) and path of every image of the folder.

    The same content twice under one label counts once; under two labels it cannot be trained
    on honestly and is left out, with a warning naming a few. An unreadable file is left out
    here as the embedding leaves it out (recorded there as a failure).
    """
    from featurebank.extractor import collect, image_key

    first: dict[str, tuple[str, str]] = {}
    conflicts: dict[str, set[str]] = {}
    for item in collect([str(source)]):
        try:
            key = image_key(Path(item.path).read_bytes())
        except OSError:
            continue
        if key in first and first[key][1] != item.label:
            conflicts.setdefault(key, {first[key][1]}).add(item.label)
        first.setdefault(key, (item.path, item.label))
    if conflicts:
        shown = "; ".join(f"{first[k][0]} ({', '.join(sorted(v))})"
                          for k, v in list(conflicts.items())[:3])
        log.warning("%s: %d image(s) appear under more than one class and are left out: %s",
                    source, len(conflicts), shown)
    kept = sorted(k for k in first if k not in conflicts)  # one order, however given
    return (np.array(kept, dtype=str), np.array([first[k][1] for k in kept], dtype=str),
            [first[k][0] for k in kept])


def _store_images(store: Path, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A store given as input is the collection: every committed row of ``spec``."""
    from featurebank.extractor import FeatureStore

    fs = FeatureStore(store)
    keys = sorted(fs.key_index(spec.fingerprint()))
    table = fs.image_table()
    rows = [table.get(k, ("", "")) for k in keys]
    return (np.array(keys, dtype=str), np.array([r[1] for r in rows], dtype=str),
            [r[0] for r in rows])
