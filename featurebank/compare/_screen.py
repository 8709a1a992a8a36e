"""Screening: every backbone and pooling embeds a stratified slice of TRAIN first; LogME on the
slice keeps the passes that hold the ``top`` sets, and only those embed the rest of TRAIN.

Embedding is most of a comparison's time (issue 30: 37 of 91 s), and a backbone whose every
cut ranks below the shortlist on the slice would only have been embedded to be ranked out. The
slice goes into the same stores as the rest (rows are keyed by content), so the kept passes
reuse its rows and a killed run resumes; the passes screened out keep only the slice's rows.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurebank.compare._candidates import Backbone
from featurebank.compare._select import FrozenCandidate
from featurebank.compare._stores import Pass

log = logging.getLogger("featurebank.compare")

#: the slice must be under this share of TRAIN's images, else screening is skipped: embedding
#: the rest for the survivors would save too little to pay for a second pass over the stores
MAX_SHARE = 0.5


@dataclass
class Slice:
    """The images every pass embeds first: a list file, their content keys, per class."""

    list_file: Path
    keys: frozenset[str]
    per_class: int

    @property
    def n(self) -> int:
        return len(self.keys)


@dataclass
class Screening:
    """What screening kept and dropped, for the report."""

    slice: Slice
    kept: list[tuple[Backbone, str]]
    dropped: list[FrozenCandidate]  #: the sets of the passes screened out (slice LogME)
    passes: list[Pass]  #: the slice passes, every (backbone, pooling)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        kept = {(b.model, pool) for b, pool in self.kept}
        return {"per_class": self.slice.per_class, "images": self.slice.n,
                "seconds": self.seconds,
                "kept_passes": [{"backbone": b.name, "pool": pool} for b, pool in self.kept],
                "screened_out_passes": [{"backbone": p.backbone.name, "pool": p.pool,
                                         "store": str(p.store), "rows": self.slice.n}
                                        for p in self.passes
                                        if (p.backbone.model, p.pool) not in kept],
                "screened_out_sets": [s.name for s in self.dropped]}


def plan_slice(train: str, per_class: int | None, n_pairs: int, exclude: frozenset[str],
               work: Path, seed: int) -> Slice | None:
    """The slice (``per_class`` images of every class, excluded images never in it, written
    as ``work/screen-images.csv``), or None when screening cannot pay: off, one pass only, or
    a slice of at least ``MAX_SHARE`` of TRAIN."""
    from featurebank.extractor import collect, image_key, open_source

    if not per_class or n_pairs < 2:
        return None
    items = [it for it in collect([train]) if not it.error and it.label]
    labels = sorted({it.label for it in items})
    if per_class * len(labels) >= MAX_SHARE * len(items):
        log.info("screening skipped: %d images per class is %d of %d TRAIN images",
                 per_class, per_class * len(labels), len(items))
        return None
    rng = np.random.default_rng(seed)
    chosen: list[tuple[str, str]] = []
    keys: set[str] = set()
    by_label: dict[str, list] = {label: [] for label in labels}
    for it in items:  # one pass: a list per class (not a scan of TRAIN per class)
        by_label[it.label].append(it)
    for label in labels:
        mine = by_label[label]
        taken = 0
        for i in rng.permutation(len(mine)):
            if taken == per_class:
                break
            key = image_key(open_source(mine[i].path))
            if key in exclude or key in keys:  # an excluded image, or a duplicate's content
                continue
            chosen.append((mine[i].path, label))
            keys.add(key)
            taken += 1
    path = work / "screen-images.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows(chosen)
    return Slice(path, frozenset(keys), per_class)


def screen(piece: Slice, pairs: list[tuple[Backbone, str]], work: Path, *, top: int,
           concat: bool, batch_size: int, progress: bool) -> Screening:
    """Embed the slice with every pass, rank every set (and concatenation) by LogME on it, and
    keep the passes holding the ``top`` best."""
    import time

    from featurebank.compare._select import rank_by_logme, shortlist
    from featurebank.compare._stores import embed_passes, load_matrices, only_keys

    start = time.perf_counter()
    passes = embed_passes(str(piece.list_file), pairs, work, batch_size, progress)
    mats = only_keys(load_matrices(passes), piece.keys)
    ranked = rank_by_logme(passes, mats, concat)
    keep = {(s.backbone.model, s.pool) for s in shortlist(ranked, top)}
    kept = [(b, pool) for b, pool in pairs if (b.model, pool) in keep]
    dropped = [s for s in ranked if (s.backbone.model, s.pool) not in keep]
    for s in dropped:
        s.screened_on = len(mats.y)
    log.info("screening on %d TRAIN images: %d of %d passes kept, %d feature sets out",
             len(mats.y), len(kept), len(pairs), len(dropped))
    return Screening(piece, kept, dropped, passes, time.perf_counter() - start)
