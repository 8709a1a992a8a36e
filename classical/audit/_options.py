"""What an audit checks and how: :class:`AuditOptions`, light (standard library only), so that
``featurebank audit`` builds its flags from it without loading scikit-learn or the store."""

from __future__ import annotations

from dataclasses import dataclass

from featurebank.options import Interval, Options, check_options, option

#: cosine similarity at or above which two rows are near-duplicates: calibrated on the digits
#: and on Fashion-MNIST seeds other than the benchmark's (docs/audit.md, "The threshold")
DEFAULT_NEAR_THRESHOLD = 0.915
#: a near-duplicate's cosine distance is at most this times the distance to the row's
#: ``near_reference``-th neighbour (Lowe's ratio test): calibrated so that 5 % of ordinary
#: Fashion-MNIST test images of another seed pass it (docs/audit.md, "The threshold")
DEFAULT_NEAR_RATIO = 0.575
#: pixel-signature correlation (8 x 8 grey thumbnails via 32 px, classical/audit/_pixels.py) at or above
#: which a candidate pair is an edited copy: calibrated on the calibration split of
#: benchmarks.audit so that at most 0.5 % of its ordinary test images pass it (docs/audit.md,
#: "The pixel check")
DEFAULT_PIXEL_THRESHOLD = 0.996
#: a pair is a candidate for the pixel check when its features' cosine similarity is at least
#: this (and it is among the row's ``neighbours`` nearest): calibrated with the threshold
DEFAULT_PIXEL_FLOOR = 0.85
#: the neighbour methods an audit may use (see featurebank.extractor.SearchOptions)
AUDIT_INDEX = ("auto", "exact", "hnsw", "ivfpq")
#: ``index='auto'`` audits exactly up to this many rows: every row against every row grows
#: with rows squared (50 000 rows of 1280 values: ~3e12 multiply-adds), an index beyond
AUDIT_EXACT_ROWS = 50_000
#: how flagged labels are chosen (featurebank.classical.audit._labels)
LABEL_RULES = ("ranked", "confident_learning")
#: the label probe's inverse regularisation per 1000 training rows: calibrated on a
#: Fashion-MNIST split of another seed with 5 % of its labels flipped (docs/audit.md)
PROBE_C = 0.0025


@dataclass(frozen=True)
class AuditOptions:
    """What ``featurebank audit`` looks for.

    Parameters
    ----------
    near_threshold : float
        Cosine similarity at the cut at or above which two images are near-duplicates (and a
        test image with such a training neighbour a leak).
    near_ratio : float
        And its cosine distance at most ``near_ratio`` times the distance to the row's
        ``near_reference``-th nearest neighbour: a copy stands far nearer its original than
        to anything else, an ordinary image among look-alikes does not. 1 turns this off.
    near_reference : int
        Which neighbour the ratio compares with (the last found if ``neighbours`` is fewer);
        above 2 so that groups of a few copies still pass.
    neighbours : int
        Nearest neighbours looked at per row: near-duplicate pairs come from them, and the
        outlier score is the distance to the last one.
    pixel_check : bool
        Confirm candidate pairs by their images' pixel signatures (classical/audit/_pixels.py):
        a pair among a row's ``neighbours`` nearest, with feature similarity at least
        ``pixel_floor`` and signature correlation at least ``pixel_threshold``, is a
        near-duplicate even when the ratio test rejected it. Reads every image in a candidate
        pair once (the stored paths); an unreadable image leaves its pairs to the features
        alone and is listed in the report.
    pixel_threshold : float
        Signature correlation at or above which a candidate pair is an edited copy.
    pixel_floor : float
        Feature similarity a pair needs to be a candidate for the pixel check.
    label_check : bool
        Flag likely label errors of the training store (confident learning on out-of-fold
        probabilities); needs labels.
    label_rule : {'ranked', 'confident_learning'}
        ``confident_learning``: the rows the rule flags (cleanlab's ``find_label_issues``);
        ``ranked``: as many rows as it flags, the least self-confident of all (cleanlab's
        ``num_label_issues`` with ``get_label_quality_scores``): more of the wrong labels at
        the same count (docs/audit.md).
    probe_c : float
        Inverse regularisation of the logistic-regression probe per 1000 training rows.
    folds : int
        Cross-validation folds of the out-of-fold probabilities.
    label_sample : int, optional
        Check the labels of this many training rows (a stratified random sample) instead of
        all: the probe's cost grows with rows.
    outliers : int
        Outliers reported per store at most (the rows farthest from their neighbours).
    outlier_fence : float
        A row is an outlier when its distance to its k-th neighbour is beyond ``Q3 + fence *
        IQR`` of the store's distances (Tukey's fence); 0: the ``outliers`` farthest rows,
        whatever they are.
    sheet_rows : int
        Rows of thumbnails per finding on the contact sheet.
    index : {'auto', 'exact', 'hnsw', 'ivfpq'}
        How neighbours are found (``auto``: exact up to 50 000 rows, a faiss index beyond).
    block_rows : int
        Rows per block of the exact search (memory ~ 2 * block_rows * dim * 4 bytes).
    seed : int
        Seeds the folds and the label sample.
    """

    near_threshold: float = option(DEFAULT_NEAR_THRESHOLD, Interval(float, 0.0, 1.0))
    near_ratio: float = option(DEFAULT_NEAR_RATIO, Interval(float, 0.0, 1.0))
    near_reference: int = option(5, Interval(int, 2, 1000))
    neighbours: int = option(10, Interval(int, 1, 1000))
    pixel_check: bool = option(True, bool)
    pixel_threshold: float = option(DEFAULT_PIXEL_THRESHOLD, Interval(float, 0.0, 1.0))
    pixel_floor: float = option(DEFAULT_PIXEL_FLOOR, Interval(float, 0.0, 1.0))
    label_check: bool = option(True, bool)
    label_rule: str = option("ranked", Options(LABEL_RULES))
    probe_c: float = option(PROBE_C, Interval(float, 0.0, None, closed="neither"))
    folds: int = option(5, Interval(int, 2, 50))
    label_sample: int | None = option(None, None, Interval(int, 10, None))
    outliers: int = option(50, Interval(int, 0, None))
    outlier_fence: float = option(1.5, Interval(float, 0.0, None))
    sheet_rows: int = option(6, Interval(int, 0, 50))
    index: str = option("auto", Options(AUDIT_INDEX))
    block_rows: int = option(4096, Interval(int, 1, None))
    seed: int = option(0, Interval(int, 0, None))

    def __post_init__(self) -> None:
        check_options(self)
