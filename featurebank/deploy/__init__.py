"""featurebank.deploy: one ONNX file from pixels to probabilities, and a Triton repository.

Above the stages, beside :mod:`featurebank.predict`: it loads a classifier as ``predict``
does, takes the feature graph its extractor runs and appends the classifier as plain tensor
ops (:func:`featurebank.classical.classifier_as_onnx`). Every name loads on first use
(the options are standard library only; the rest needs onnx and the stages).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurebank.lazy import attach

_LAZY = {"DeployOptions": "featurebank.deploy._options",
         "INSTANCE_KINDS": "featurebank.deploy._options",
         "PREFERRED_BATCH_SIZES": "featurebank.deploy._options",
"Deployable": "featurebank.deploy._fuse",
         "META_DEPLOY": "featurebank.deploy._fuse",
         "build_deployable": "featurebank.deploy._fuse",
         "check_replaceable": "featurebank.deploy._fuse",
         "is_deployed": "featurebank.deploy._fuse",
         "readme_path": "featurebank.deploy._fuse",
         "training_digest": "featurebank.deploy._fuse",
         "config_text": "featurebank.deploy._triton",
         "triton_target": "featurebank.deploy._triton",
         "write_triton": "featurebank.deploy._triton"}

__all__ = ["INSTANCE_KINDS", "META_DEPLOY", "PREFERRED_BATCH_SIZES", "DeployOptions",
           "Deployable", "build_deployable", "check_replaceable", "config_text", "is_deployed",
           "readme_path", "training_digest", "triton_target", "write_triton"]

if TYPE_CHECKING:
    from featurebank.deploy._fuse import (
        META_DEPLOY,
        Deployable,
        build_deployable,
        check_replaceable,
        is_deployed,
        readme_path,
        training_digest,
    )
    from featurebank.deploy._options import INSTANCE_KINDS, PREFERRED_BATCH_SIZES, DeployOptions
    from featurebank.deploy._triton import config_text, triton_target, write_triton


__getattr__, __dir__ = attach(__name__, _LAZY)
