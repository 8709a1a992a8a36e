"""featurebank.classical.audit: what is wrong with a train/test split, from the stored features.

Exact and near duplicates, test images leaked from training, likely label errors (confident
learning on out-of-fold probabilities) and outliers: :func:`audit_stores`, its options
:class:`AuditOptions`, and :func:`read_exclusions` for the ``exclude.txt`` it writes. The public
names are exported from :mod:`featurebank.classical`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurebank.lazy import attach

_LAZY = {
    "AuditOptions": "featurebank.classical.audit._options",
    "DEFAULT_NEAR_THRESHOLD": "featurebank.classical.audit._options",
    "DEFAULT_NEAR_RATIO": "featurebank.classical.audit._options",
    "AuditReport": "featurebank.classical.audit._audit",
    "audit_stores": "featurebank.classical.audit._audit",
    "LabelIssues": "featurebank.classical.audit._labels",
    "confident_learning": "featurebank.classical.audit._labels",
    "out_of_fold_probabilities": "featurebank.classical.audit._labels",
    "ranked_label_issues": "featurebank.classical.audit._labels",
    "read_exclusions": "featurebank.classical.audit._exclusions",
}

__all__ = ["AuditOptions", "AuditReport", "DEFAULT_NEAR_RATIO", "DEFAULT_NEAR_THRESHOLD", "LabelIssues",
           "audit_stores", "confident_learning", "out_of_fold_probabilities", "ranked_label_issues",
           "read_exclusions"]

if TYPE_CHECKING:
    from featurebank.classical.audit._audit import AuditReport, audit_stores
    from featurebank.classical.audit._exclusions import read_exclusions
    from featurebank.classical.audit._labels import (
        LabelIssues,
        confident_learning,
        out_of_fold_probabilities,
        ranked_label_issues,
    )
    from featurebank.classical.audit._options import (
        DEFAULT_NEAR_RATIO,
        DEFAULT_NEAR_THRESHOLD,
        AuditOptions,
    )

__getattr__, __dir__ = attach(__name__, _LAZY)
