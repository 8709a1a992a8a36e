"""Embedding each image once per backbone and pooling, into stores in the work folder.

One store per (backbone, pooling) holds every cut of that pass: ``embed_collection`` computes
only the images a store lacks, so a killed run resumes where it stopped and a second run embeds
nothing. The matrices of every feature set are then aligned on the images all stores hold.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurebank.compare._candidates import Backbone
from featurebank.paths import write_json
from featurebank.spec import FeatureSpec

log = logging.getLogger("featurebank.compare")

#: images timed per feature set (after one warm-up pass), and timed passes (the fastest counts)
TIMED_IMAGES = 8
TIMED_PASSES = 2


@dataclass
class Pass:
    """One pass over the images: a backbone, a pooling, its store and one spec per cut."""

    backbone: Backbone
    pool: str
    store: Path
    specs: list[FeatureSpec]
    embedded: int = 0
    cached: int = 0
    seconds: float = 0.0


def _extractor(backbone: Backbone, pool: str, cuts, batch_size: int):
    from featurebank.extractor import Extractor

    return Extractor(backbone.model, layers=list(cuts), pool=pool, batch_size=batch_size)


def embed_passes(train: str, pairs: list[tuple[Backbone, str]], work_dir: Path,
                 batch_size: int, progress: bool) -> list[Pass]:
    """Embed ``train`` once per (backbone, pooling) pair (every cut in one pass)."""
    from featurebank.extractor import EmbedRun, embed_collection

    passes = []
    for b, pool in pairs:
        ex = _extractor(b, pool, b.cuts, batch_size)
        store = work_dir / f"{b.label}-{pool}.h5"
        log.info("embedding %s with %s, %s pooling (%d cuts) into %s", train, b.name, pool,
                 len(b.cuts), store)
        run = EmbedRun(batch_size=batch_size, progress=progress)
        summary = embed_collection([train], store, extractor=ex, run=run)
        passes.append(Pass(b, pool, store, list(ex.specs), summary.embedded, summary.cached,
                           summary.seconds))
    return passes


@dataclass
class Matrices:
    """Every feature set's rows, aligned on the images all passes hold."""

    X: dict[str, np.ndarray]  #: fingerprint -> float32 (n, d)
    y: np.ndarray
    keys: np.ndarray
    paths: np.ndarray


def load_matrices(passes: list[Pass]) -> Matrices:
    from featurebank.extractor.store import FeatureStore

    parts = {}
    for p in passes:
        fs = FeatureStore(p.store)
        for spec in p.specs:
            parts[spec.fingerprint()] = fs.read(spec.fingerprint())
    first = next(iter(parts.values()))
    common = set(first.keys)
    for f in parts.values():
        common &= set(f.keys)
    keep = [i for i, k in enumerate(first.keys) if k in common and first.y[i] != ""]
    keys = first.keys[keep]
    X = {}
    for fp, f in parts.items():
        pos = {k: i for i, k in enumerate(f.keys)}
        X[fp] = f.X[[pos[k] for k in keys]]
        labels = f.y[[pos[k] for k in keys]]
        if not np.array_equal(labels, first.y[keep]):  # one image, two labels: never guess
            from featurebank.errors import FeaturebankError

            raise FeaturebankError(f"the work folder's stores disagree on the labels of the same "
                                   f"images ({fp}); remove the work folder and run again")
    return Matrices(X, first.y[keep], keys, first.paths[keep])


def only_keys(mats: Matrices, keys: frozenset[str]) -> Matrices:
    """``mats`` restricted to the rows whose content key is in ``keys`` (the screening slice:
    a store may hold more, from an earlier run)."""
    keep = np.flatnonzero([k in keys for k in mats.keys])
    return Matrices({fp: X[keep] for fp, X in mats.X.items()}, mats.y[keep], mats.keys[keep],
                    mats.paths[keep])


def without_excluded(mats: Matrices, exclude: frozenset[str]) -> tuple[Matrices, set[str]]:
    """``mats`` less the TRAIN rows whose content key is excluded (``--exclude``), and the keys
    left out: neither LogME, halving nor the final fit sees them."""
    if not exclude:
        return mats, set()
    drop = np.array([k in exclude for k in mats.keys], dtype=bool)
    if drop.all():
        from featurebank.errors import FeaturebankError

        raise FeaturebankError(f"exclude leaves out all {len(drop)} labelled TRAIN images; "
                               "nothing is left to compare on")
    keep = np.flatnonzero(~drop)
    return (Matrices({fp: X[keep] for fp, X in mats.X.items()}, mats.y[keep], mats.keys[keep],
                     mats.paths[keep]), set(mats.keys[drop]))


def time_feature_set(backbone: Backbone, pool: str, cuts, images: list[str], work_dir: Path,
                     batch_size: int) -> float:
    """Milliseconds per image of decoding and running the graph up to these cuts (fastest of
    TIMED_PASSES passes over the same images, after a warm-up), remembered in the work folder
    so that a resumed run reports the same figure."""
    cache = work_dir / "timings.json"
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    key = f"{backbone.model}|{pool}|{'+'.join(cuts)}|{len(images)}"
    if key not in known:
        ex = _extractor(backbone, pool, cuts, batch_size)
        ex.embed(images[:2])  # builds the session
        best = float("inf")
        for _ in range(TIMED_PASSES):
            start = time.perf_counter()
            ex.embed(images)
            best = min(best, time.perf_counter() - start)
        known[key] = 1000 * best / len(images)
        write_json(known, cache)
    return float(known[key])
