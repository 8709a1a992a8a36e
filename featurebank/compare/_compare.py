"""``compare``: rank backbones, cuts, poolings and classifiers on TRAIN; read TEST once.

The order of the work is the protocol (VTAB-1k's: choose on the training split, test once):
1. every check that can fail (backbones, cuts, labels, the output) before a file is written;
2. with ``screen``, every backbone and pooling embeds a stratified slice of TRAIN first, and
   only the passes holding the LogME shortlist on it go on (``_screen``);
3. one pass per (kept) backbone and pooling into the work folder's stores (resumable); LogME
   ranks every feature set from the stored features, in seconds;
4. successive halving cross-validates the shortlisted sets with every classifier kind and its
   regularisation on TRAIN, and chooses;
5. the choice is fitted on all of TRAIN, TEST is embedded for it alone and scored once;
6. the report, and the classifier file with the choice and its evidence inside.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featurebank.compare._candidates import check_collection, is_store, resolve_backbones
from featurebank.compare._options import CompareOptions
from featurebank.compare._report import (
    plot_accuracy_vs_ms,
    table,
    wilson_interval,
)
from featurebank.compare._select import FrozenCandidate, Selection
from featurebank.errors import FeaturebankError
from featurebank.paths import check_folder, check_writable, write_json

log = logging.getLogger("featurebank.compare")


@dataclass
class CompareResult:
    """Every feature set ranked, the choice, its classifier and its one TEST figure."""

    sets: list[FrozenCandidate]
    selection: Selection
    classifier: Any  #: featurebank.classical.TrainedClassifier
    test: dict | None
    seconds: dict[str, float]
    passes: list[dict] = field(default_factory=list)
    options: CompareOptions = field(default_factory=CompareOptions)
    excluded_keys: set[str] = field(default_factory=set)  #: TRAIN rows left out (--exclude)
    finetune: Any = None  #: the fine-tuning candidate (FinetuneCandidate), with --budget
    screening: Any = None  #: what screening kept and dropped (Screening); None: not screened

    @property
    def finetuned(self) -> bool:
        """Whether the fine-tuned network, not the frozen configuration, is the choice."""
        return self.finetune is not None and self.finetune.chosen

    @property
    def chosen(self) -> FrozenCandidate:
        return self.selection.chosen

    def table(self) -> str:
        frozen = None if self.finetuned else self.chosen  # the * marks the one choice
        lines = table(self.sets, frozen)
        return lines if self.finetune is None else f"{lines}\n{self.finetune.line()}"

    def choice(self) -> dict:
        s, sel = self.chosen, self.selection
        return {"feature_set": s.name, "backbone": s.backbone.name, "cuts": list(s.cuts),
                "pool": s.pool, "classifier": sel.classifier, "C": sel.C, "cv": s.cv,
                "logme": s.logme, "ms_per_image": s.ms_per_image, "test": self.test,
                "tie_broken_by_speed": sel.tie_broken_by_speed,
                "finetuned": self.finetuned,  # then "test" is the tuned network's
                "test_of": (self.finetune.file if self.finetuned else "the frozen classifier"),
                "finetune": self.finetune.to_dict() if self.finetune is not None else None}

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {"options": asdict(self.options), "chosen": self.choice(),
                "feature_sets": [s.to_dict() for s in self.sets],
                "halving": self.selection.history, "passes": self.passes,
                "excluded": len(self.excluded_keys), "seconds": self.seconds,
                "screening": self.screening.to_dict() if self.screening else None}

    def conclusion(self) -> str:
        sel, s = self.selection, self.chosen
        reg = "k" if sel.classifier == "knn" else "C"
        cv = s.cv or {}  # the chosen set was always cross-validated
        text = (f"{s.name}, {sel.classifier} {reg}={sel.C:g}: CV accuracy "
                f"{cv['accuracy']:.4f} +- {cv['std']:.4f} on TRAIN"
                + (" (tied in CV accuracy: the fastest, then narrowest, chosen)" if sel.tie_broken_by_speed
                   else ""))
        if self.finetuned:
            ft = self.finetune
            text = (f"{s.backbone.label} fine-tuned above {ft.from_layer} ({ft.file}): "
                    f"{ft.reason}")
        if self.test:
            lo, hi = self.test["interval"]
            text += (f"; TEST accuracy {self.test['accuracy']:.4f} (95 % Wilson interval "
                     f"{lo:.4f}-{hi:.4f}, {self.test['n']} images)")
        return text


def compare(train: str | Path, test: str | Path | None = None, *,
            options: CompareOptions | None = None, output: str | Path | None = None,
            report: str | Path | None = None, work_dir: str | Path | None = None,
            progress: bool = True, exclude: Iterable[str] = ()) -> CompareResult:
    """Rank and choose a backbone, cut, pooling and classifier on TRAIN; score TEST once.

    Parameters
    ----------
    train, test : path
        Folders (one sub-folder per class), list files or stores of labelled images. A store
        stands for the images it holds (they are embedded again by every backbone).
    options : CompareOptions
    output : path, optional
        The chosen classifier's file (``.joblib``): ``featurebank predict``, ``serve`` and
        ``evaluate`` use it; its ``info["compare"]`` holds the choice and the table.
    report : path, optional
        Folder for ``compare.json`` (every candidate) and ``compare.png`` (accuracy vs ms).
    work_dir : path, optional
        Where the stores are (default: ``OUTPUT.work`` beside the output, else
        ``compare-work``); a second run with the same folder embeds nothing again.
    progress : bool
        Progress of the embedding passes.
    exclude : iterable of str
        Content keys of TRAIN images to leave out of ranking, halving and the final fit
        (:func:`featurebank.classical.read_exclusions`, ``--exclude``); those TRAIN holds are
        recorded in the classifier file, and ``evaluate`` skips them.
    """
    options = options or CompareOptions()
    start = time.perf_counter()
    output, work, backbones, (train_input, labels) = _check_inputs(train, test, options, output,
                                                                   report, work_dir)
    train, test = str(train), (str(test) if test is not None else None)
    # every check passed: the work starts
    work.mkdir(exist_ok=True)
    if is_store(train):  # checked above; its images become a list file in the work folder
        train_input, labels = check_collection(train, "TRAIN", work)
    log.info("TRAIN: %d labelled images in %d classes; %d backbone(s), %d pooling(s)",
             sum(labels.values()), len(labels), len(backbones), len(options.pools))
    from featurebank.compare._select import fit_choice
    from featurebank.compare._stores import embed_passes, load_matrices, without_excluded

    pairs, screening = _screen(train_input, backbones, work, options, frozenset(exclude),
                               progress)
    seconds = {"screen": screening.seconds} if screening else {}
    t = time.perf_counter()
    passes = embed_passes(train_input, pairs, work, options.batch_size, progress)
    seconds["embed"] = time.perf_counter() - t
    mats, excluded = without_excluded(load_matrices(passes), frozenset(exclude))
    if excluded:
        log.info("left out %d TRAIN images (the exclusions file)", len(excluded))
    ranked, sel = _choose(passes, mats, screening, options, work, seconds)
    estimator = fit_choice(sel, mats, options.seed)
    result = CompareResult(ranked, sel, None, None, seconds,
                           [{"backbone": p.backbone.name, "pool": p.pool, "store": str(p.store),
                             "embedded": p.embedded, "cached": p.cached, "seconds": p.seconds}
                            for p in passes], options, excluded, screening=screening)
    tuned = None
    if options.budget is not None:
        t = time.perf_counter()
        tuned = _consider_finetune(result, train_input, mats, work, output, options,
                                   frozenset(excluded), start, progress)
        seconds["finetune"] = time.perf_counter() - t
    result.classifier = _classifier(result, estimator, mats)
    if test is not None:
        t = time.perf_counter()
        result.test = (_score_tuned_once(tuned, test, work, options, progress)
                       if tuned is not None else
                       _score_test_once(result, test, work, options, progress))
        seconds["test"] = time.perf_counter() - t
        result.classifier.info["compare"]["test"] = result.test
    seconds["total"] = time.perf_counter() - start
    _write(result, output, report)
    return result


def _check_inputs(train: str | Path, test: str | Path | None, options: CompareOptions,
                  output: str | Path | None, report: str | Path | None,
                  work_dir: str | Path | None) -> tuple[Path | None, Path, list, tuple[str, dict]]:
    """Everything compare can refuse, refused before any work: the output, work and report
    paths, TRAIN and TEST, every backbone and cut (together), and ``finetune_from``. Returns
    the output file, the work folder, the backbones and TRAIN as :func:`check_collection`
    gave it (read once: a folder of 100k images is not walked twice)."""
    output = Path(output) if output is not None else None
    if output is not None:
        if output.suffix.lower() != ".joblib":
            raise FeaturebankError(f"output={output}: the chosen classifier is a .joblib file")
        check_writable(output, what="classifier", suffix=".joblib")
    work = Path(work_dir) if work_dir else (output.with_suffix(".work") if output
                                            else Path("compare-work"))
    check_folder(work, what="work folder")
    if report is not None:
        check_folder(report, what="report")
    checked_train = check_collection(str(train), "TRAIN")
    if test is not None:
        check_collection(str(test), "TEST")
    backbones = resolve_backbones(options.models, options.layers)
    if options.budget is not None:
        from featurebank.compare._finetune import check_finetune_from

        check_finetune_from(backbones, options.finetune_from)
    return output, work, backbones, checked_train


def _choose(passes, mats, screening, options: CompareOptions, work: Path,
            seconds: dict[str, float]) -> tuple[list[FrozenCandidate], Selection]:
    """LogME over every set (the screened-out ones after, with their slice's figure), halving
    over the ``--top``, their speed measured, and a tie given to the faster set; each step's
    time in ``seconds``."""
    from featurebank.compare._select import confirm, prefer_faster, rank_by_logme, shortlist
    from featurebank.compare._stores import TIMED_IMAGES, time_feature_set

    t = time.perf_counter()
    # the screened-out sets after every kept one: their LogME is on the slice alone
    ranked = rank_by_logme(passes, mats, options.concat) + (screening.dropped if screening
                                                            else [])
    seconds["logme"] = time.perf_counter() - t
    log.info("LogME ranked %d feature sets in %.1f s; best: %s", len(ranked), seconds["logme"],
             ranked[0].name)
    t = time.perf_counter()
    picked = shortlist(ranked, options.top)
    sel = confirm(picked, mats, options.classifiers, factor=options.factor,
                  folds=options.folds, seed=options.seed)
    seconds["halving"] = time.perf_counter() - t
    t = time.perf_counter()
    timed = [str(p) for p in mats.paths[:TIMED_IMAGES]]
    for s in picked:
        s.ms_per_image = time_feature_set(s.backbone, s.pool, s.cuts, timed, work,
                                          options.batch_size)
    seconds["timing"] = time.perf_counter() - t
    return ranked, prefer_faster(sel)


def _write(result: CompareResult, output: Path | None, report: str | Path | None) -> None:
    """``compare.json`` and ``compare.png`` in the report folder; the classifier file."""
    if report is not None:
        folder = Path(report)
        folder.mkdir(exist_ok=True)
        write_json(result.to_dict(), folder / "compare.json")
        plot_accuracy_vs_ms(result.sets, result.chosen, folder / "compare.png")
    if output is not None:
        result.classifier.save(output)


def _screen(train: str, backbones, work: Path, options: CompareOptions, exclude: frozenset[str],
            progress: bool):
    """The (backbone, pooling) passes that embed all of TRAIN, and the screening that chose
    them (None when screening is off or cannot pay: every pass then)."""
    from featurebank.compare._screen import plan_slice, screen

    pairs = [(b, pool) for b in backbones for pool in options.pools]
    piece = plan_slice(train, options.screen, len(pairs), exclude, work, options.seed)
    if piece is None:
        return pairs, None
    done = screen(piece, pairs, work, top=options.top, concat=options.concat,
                  batch_size=options.batch_size, progress=progress)
    return done.kept, done


def _consider_finetune(result: CompareResult, train: str, mats, work: Path, output: Path | None,
                       options: CompareOptions, exclude: frozenset[str], start: float,
                       progress: bool) -> Path | None:
    """Fine-tuning as one more candidate (``--budget``): its row in ``result.finetune``; when
    chosen, the tuned network written beside the output (``CHOSEN.onnx``), and its path."""
    from featurebank.compare._finetune import consider
    from featurebank.compare._stores import TIMED_IMAGES

    left = options.budget - (time.perf_counter() - start) / 60  # type: ignore[operator]
    chosen = result.chosen
    assert chosen.cv is not None  # halving cross-validated the set it chose
    cand, tuned = consider(chosen, train, n=len(mats.y), frozen_cv=chosen.cv["accuracy"],
                           left_minutes=left, work=work, options=options,
                           timed=[str(p) for p in mats.paths[:TIMED_IMAGES]], exclude=exclude,
                           progress=progress)
    result.finetune = cand
    if not cand.chosen:
        return None
    path = output.with_suffix(".onnx") if output is not None else work / "chosen.onnx"
    tuned.export(path)
    cand.file = str(path)
    return path


def _classifier(result: CompareResult, estimator, mats):
    from featurebank.classical import TrainedClassifier

    s, sel = result.chosen, result.selection
    info = {"classifier": sel.classifier, "C": sel.C, "n_train": int(len(mats.y)),
            "excluded": len(result.excluded_keys), "val_scores": {}, "chosen_by": "featurebank compare",
            "compare": {**result.choice(),
                        "table": [x.to_dict() for x in result.sets if x.cv is not None]}}
    if s.backbone.is_file:
        info["onnx_path"] = s.backbone.model
    return TrainedClassifier(estimator, list(s.specs), [str(c) for c in estimator.classes_],
                        set(mats.keys), None, info, set(result.excluded_keys))


def _score_tuned_once(tuned: Path, test: str, work: Path, options: CompareOptions,
                      progress: bool) -> dict:
    """Embed TEST through the chosen tuned network to its logits, and score it once."""
    from featurebank.extractor import Extractor
    from featurebank.finetune import load_tuned

    ex = Extractor(str(tuned), layers=["logits"], batch_size=options.batch_size)
    return _embed_and_score(load_tuned(tuned), ex, test, work / "test-finetuned.h5", work,
                            options, progress)


def _score_test_once(result: CompareResult, test: str, work: Path, options: CompareOptions,
                     progress: bool) -> dict:
    """Embed TEST for the chosen feature set only, and score the chosen classifier once."""
    from featurebank.compare._stores import _extractor

    s = result.chosen
    ex = _extractor(s.backbone, s.pool, s.cuts, options.batch_size)
    return _embed_and_score(result.classifier, ex, test,
                            work / f"test-{s.backbone.label}-{s.pool}.h5", work, options,
                            progress)


def _embed_and_score(classifier, ex, test: str, store: Path, work: Path,
                     options: CompareOptions, progress: bool) -> dict:
    from featurebank.classical import evaluate
    from featurebank.extractor import EmbedRun, embed_collection

    test_input = test
    if is_store(test):
        test_input, _ = check_collection(test, "TEST", work)
    embed_collection([test_input], store, extractor=ex,
                     run=EmbedRun(batch_size=options.batch_size, progress=progress))
    scored = evaluate(classifier, store, baseline=False, unseen="wrong")
    n, acc = int(scored["n"]), float(scored["accuracy"])
    lo, hi = wilson_interval(round(acc * n), n)
    return {"accuracy": acc, "n": n, "interval": [lo, hi], "interval_method": "wilson 95 %",
            "balanced_accuracy": scored["balanced_accuracy"], "macro_f1": scored["macro_f1"],
            "unseen_labels": scored.get("unseen_labels", {})}
