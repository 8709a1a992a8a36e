"""featurebank.compare: which backbone, cut, pooling and classifier, on the user's own data.

``compare(train, test, options=CompareOptions(models=(...)))`` embeds TRAIN once per backbone
and pooling, ranks every feature set by LogME, confirms the best by successive halving with
cross-validation on TRAIN, fits the choice, reads TEST once, and writes the table, the JSON, the
accuracy-vs-ms plot and a classifier file ([docs/compare.md]). It sits above the stages, beside
``featurebank.predict``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurebank.lazy import attach

_LAZY = {
    "CompareOptions": "featurebank.compare._options",
    "CompareResult": "featurebank.compare._compare",
    "compare": "featurebank.compare._compare",
    "pareto_front": "featurebank.compare._report",
    "read_suite": "featurebank.compare._suite",
    "run_suite": "featurebank.compare._suite",
    "suite_table": "featurebank.compare._suite",
    "wilson_interval": "featurebank.compare._report",
}

__all__ = ["CompareOptions", "CompareResult", "compare", "pareto_front", "read_suite",
           "run_suite", "suite_table", "wilson_interval"]

if TYPE_CHECKING:
    from featurebank.compare._compare import CompareResult, compare
    from featurebank.compare._options import CompareOptions
    from featurebank.compare._report import pareto_front, wilson_interval
    from featurebank.compare._suite import read_suite, run_suite, suite_table

__getattr__, __dir__ = attach(__name__, _LAZY)
