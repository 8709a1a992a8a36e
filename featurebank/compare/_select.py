"""Rank every feature set by LogME, confirm the best by successive halving on TRAIN, fit the
choice on all of TRAIN."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from featurebank.compare._candidates import Backbone
from featurebank.compare._stores import Matrices, Pass
from featurebank.spec import FeatureSpec

log = logging.getLogger("featurebank.compare")


@dataclass
class FrozenCandidate:
    """One (backbone, cut or cuts, pooling) on frozen features: a row of the table. (A stored
    feature set is :class:`featurebank.extractor.store.FeatureSet`; fine-tuning is
    :class:`~featurebank.compare._finetune.FinetuneCandidate`.)"""

    backbone: Backbone
    pool: str
    specs: list[FeatureSpec]
    dim: int
    logme: float = float("nan")
    ms_per_image: float | None = None
    cv: dict | None = None  #: the best classifier's CV record, once halving ran on this set
    rounds: int = 0  #: halving rounds the set's best candidate reached
    #: TRAIN images its LogME was computed on when screening dropped its pass (None: kept)
    screened_on: int | None = None

    @property
    def key(self) -> str:
        return "+".join(s.fingerprint() for s in self.specs)

    @property
    def cuts(self) -> tuple[str, ...]:
        return tuple(s.layer for s in self.specs)

    @property
    def name(self) -> str:
        return f"{self.backbone.label} {'+'.join(self.cuts)} {self.pool}"

    @property
    def flops_share(self) -> float | None:
        shares = dict(zip(self.backbone.cuts, self.backbone.flops, strict=True))
        known = [shares.get(c) for c in self.cuts]
        return max(known) if known and all(v is not None for v in known) else None  # type: ignore[type-var]

    def to_dict(self) -> dict:
        return {"backbone": self.backbone.name, "cuts": list(self.cuts), "pool": self.pool,
                "fingerprints": [s.fingerprint() for s in self.specs], "dim": self.dim,
                "logme": self.logme, "ms_per_image": self.ms_per_image,
                "flops_share": self.flops_share, "cv": self.cv, "halving_rounds": self.rounds,
                "screened_out_on": self.screened_on}


def rank_by_logme(passes: list[Pass], mats: Matrices, concat: bool) -> list[FrozenCandidate]:
    """Every cut of every pass (and, with ``concat``, each pass's two best cuts together),
    scored by LogME on all TRAIN rows, best first. Concatenated matrices join ``mats.X``."""
    from threadpoolctl import threadpool_limits

    from featurebank.classical.selection import logme_score

    ranked: list[FrozenCandidate] = []
    with threadpool_limits(1):  # small SVDs: threads only contend on a shared machine
        for p in passes:
            _rank_pass(p, mats, concat, ranked, logme_score)
    ranked.sort(key=lambda s: -s.logme)
    return ranked


def _rank_pass(p: Pass, mats: Matrices, concat: bool, ranked: list[FrozenCandidate],
               score) -> None:
    """Score one pass's cuts (and its two best together) into ``ranked``."""
    singles = []
    for spec in p.specs:
        X = mats.X[spec.fingerprint()]
        singles.append(FrozenCandidate(p.backbone, p.pool, [spec], X.shape[1], score(X, mats.y)))
    singles.sort(key=lambda s: -s.logme)
    ranked += singles
    if concat and len(singles) > 1:
        # in catalogue order, as a classifier file reads them
        order = {c: i for i, c in enumerate(p.backbone.cuts)}
        pair = sorted([singles[0].specs[0], singles[1].specs[0]], key=lambda s: order[s.layer])
        X = np.hstack([mats.X[s.fingerprint()] for s in pair])
        both = FrozenCandidate(p.backbone, p.pool, pair, X.shape[1], score(X, mats.y))
        mats.X[both.key] = X
        ranked.append(both)


def shortlist(ranked: list[FrozenCandidate], top: int) -> list[FrozenCandidate]:
    """The ``top`` best by LogME: rank first, then confirm only those (each more set costs
    every classifier kind and C in halving's first round)."""
    return ranked[:top]


@dataclass
class Selection:
    """What halving chose, with its evidence."""

    sets: list[FrozenCandidate]
    chosen: FrozenCandidate
    classifier: str
    C: float
    history: list[dict] = field(default_factory=list)
    tie_broken_by_speed: bool = False  #: chosen over a set of equal CV accuracy for its speed


def confirm(shortlisted: list[FrozenCandidate], mats: Matrices, classifiers: tuple[str, ...], *,
            factor: int, folds: int, seed: int) -> Selection:
    """Successive halving over (feature set, classifier, C) on TRAIN's rows."""
    from featurebank.classical.selection import default_candidates, successive_halving

    by_key = {s.key: s for s in shortlisted}
    candidates = default_candidates(list(by_key), classifiers)
    result = successive_halving({k: mats.X[k] for k in by_key}, mats.y, candidates,
                                factor=factor, folds=folds, random_state=seed,
                                progress=log.info, names={k: s.name for k, s in by_key.items()})
    ranking = result.ranking()
    for s in shortlisted:  # each set's best candidate is its CV figure
        c = next(c for c in ranking if c.features == s.key)
        n, mean, std = result.last(c)
        s.cv = {"accuracy": mean, "std": std, "n": n, "classifier": c.classifier, "C": c.C,
                "folds": folds}
        s.rounds = len(result.history[c])
    best = result.best
    history = [{"features": by_key[c.features].name, "classifier": c.classifier, "C": c.C,
                "rounds": [{"n": n, "accuracy": m, "std": sd} for n, m, sd in result.history[c]]}
               for c in ranking]
    history += [{"features": by_key[c.features].name, "classifier": c.classifier, "C": c.C,
                 "rounds": [{"n": n, "accuracy": m, "std": sd} for n, m, sd in result.history[c]],
                 "skipped": why} for c, why in result.skipped.items()]
    return Selection(shortlisted, by_key[best.features], best.classifier, best.C, history)


#: ms per image within this fraction of the fastest count as the same speed: two sets cut at
#: the same depth (``blocks.10`` and ``blocks.9+blocks.10``) run the same network, and their
#: timings differ by the machine's noise (4.8 and 5.0 ms on a new user's collection)
SAME_SPEED = 0.10


def prefer_faster(sel: Selection) -> Selection:
    """At a tie, the faster set, with the chosen classifier kind: among the sets where a
    candidate of that kind reached the last round with the winner's mean CV accuracy on the
    same rows, those within :data:`SAME_SPEED` of the fewest ms per image, and of them the
    narrowest (fewest features). Halving alone breaks such a tie by the spread across folds
    and then by LogME's order, which says nothing about cost (issue 30's note: it chose a
    slower cut at equal accuracy). The kind stays: a tie at a perfect CV score says nothing
    about kinds either, and with an adopted ResNet-18 and Lite0 on a new user's collection,
    switching to the faster set's RBF SVM scored 80 % on TEST where logistic regression on
    the same set scored 100 %."""
    won = sel.chosen.cv
    if won is None or sel.chosen.ms_per_image is None:
        return sel
    tied = [(s.ms_per_image, s, entry) for s in sel.sets if s.ms_per_image is not None
            for entry in [_tied_entry(sel, s.name, won)] if entry is not None]
    if not any(s is sel.chosen for _, s, _ in tied):  # no record of its own: nothing to compare
        return sel
    quickest = min(ms for ms, _, _ in tied)
    fast = [(s, e) for ms, s, e in tied if ms <= quickest * (1 + SAME_SPEED)]
    fastest, entry = min(fast, key=lambda se: (se[0].dim, se[0].ms_per_image))
    chosen_is_fast = any(s is sel.chosen for s, _ in fast)
    if fastest is sel.chosen or (chosen_is_fast and sel.chosen.dim == fastest.dim):
        return sel
    log.info("%s ties %s at CV accuracy %.4f with %s and is as fast or faster (%.2f vs %.2f "
             "ms/image) with %d features (against %d): chosen", fastest.name, sel.chosen.name,
             won["accuracy"], sel.classifier, fastest.ms_per_image, sel.chosen.ms_per_image,
             fastest.dim, sel.chosen.dim)
    last = entry["rounds"][-1]
    fastest.cv = {**(fastest.cv or won), "classifier": sel.classifier, "C": entry["C"],
                  "accuracy": last["accuracy"], "std": last["std"], "n": last["n"]}
    return Selection(sel.sets, fastest, sel.classifier, entry["C"], sel.history,
                     tie_broken_by_speed=True)


def _tied_entry(sel: Selection, name: str, won: dict) -> dict | None:
    """The best-ranked halving record of set ``name`` with the chosen kind that reached the
    last round (``won["n"]`` rows) at the winner's accuracy; None if it has none."""
    for entry in sel.history:  # in halving's ranking order, best first
        last = entry["rounds"][-1] if entry["rounds"] else None
        if (entry["features"] == name and entry["classifier"] == sel.classifier and last
                and last["n"] == won["n"] and last["accuracy"] == won["accuracy"]):
            return entry
    return None


def fit_choice(sel: Selection, mats: Matrices, seed: int):
    """The chosen classifier fitted on every TRAIN row, as a classifier file's estimator."""
    import warnings

    from featurebank.classical import LinearProbe

    X = mats.X[sel.chosen.key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LinearProbe(sel.classifier, Cs=(sel.C,), random_state=seed).fit(X, mats.y)
