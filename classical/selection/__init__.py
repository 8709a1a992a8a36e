"""featurebank.classical.selection: choosing features and classifiers on TRAIN alone.

:func:`logme_score` ranks feature sets without training (LogME, You et al. 2021);
:func:`successive_halving` cross-validates the promising (feature set, classifier, C) candidates
on growing parts of the training rows (Jamieson & Talwalkar 2016). ``featurebank compare`` and
``featurebank train --classifier auto`` are built on them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurebank.lazy import attach

_LAZY = {
    "Candidate": "featurebank.classical.selection._halving",
    "HalvingResult": "featurebank.classical.selection._halving",
    "choose_classifier": "featurebank.classical.selection._halving",
    "default_candidates": "featurebank.classical.selection._halving",
    "logme_score": "featurebank.classical.selection._logme",
    "stratified_order": "featurebank.classical.selection._halving",
    "successive_halving": "featurebank.classical.selection._halving",
}

__all__ = ["Candidate", "HalvingResult", "choose_classifier", "default_candidates", "logme_score", "stratified_order",
           "successive_halving"]

if TYPE_CHECKING:
    from featurebank.classical.selection._halving import (
        Candidate,
        HalvingResult,
        choose_classifier,
        default_candidates,
        stratified_order,
        successive_halving,
    )
    from featurebank.classical.selection._logme import logme_score

__getattr__, __dir__ = attach(__name__, _LAZY)
