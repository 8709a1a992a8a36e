"""featurebank.finetune: fine-tune the top layers from the feature store's cached maps.

The trunk below the cut runs once per image (its unpooled float16 maps are stored); only the
layers above it train, epoch after epoch, in torch. ``import featurebank.finetune`` imports
neither torch, scikit-learn nor the extractor: :func:`load_tuned` (used by ``predict`` and the service) needs
only onnx and numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurebank.lazy import attach

# public name -> its module, loaded on first use: the options cost only the standard library;
# the rest needs numpy, onnx and the classical stage (scikit-learn)
_LAZY = {"FinetuneOptions": "featurebank.finetune._options",
         "finetune": "featurebank.finetune._api", "FinetuneResult": "featurebank.finetune._api",
         "META_FINETUNE": "featurebank.finetune._tuned",
         "TunedClassifier": "featurebank.finetune._tuned",
         "is_tuned_onnx": "featurebank.finetune._tuned", "load_tuned": "featurebank.finetune._tuned",
         "tuned_lineage": "featurebank.finetune._tuned",
         "write_report": "featurebank.finetune._report"}

__all__ = ["META_FINETUNE", "FinetuneOptions", "FinetuneResult", "TunedClassifier", "finetune",
           "is_tuned_onnx", "load_tuned", "tuned_lineage", "write_report"]

if TYPE_CHECKING:
    from featurebank.finetune._api import FinetuneResult, finetune
    from featurebank.finetune._options import FinetuneOptions
    from featurebank.finetune._report import write_report
    from featurebank.finetune._tuned import (
        META_FINETUNE,
        TunedClassifier,
        is_tuned_onnx,
        load_tuned,
        tuned_lineage,
    )


__getattr__, __dir__ = attach(__name__, _LAZY)
