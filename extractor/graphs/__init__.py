"""Feature graphs: the ONNX model cut at layers and pooled (``_cut``), its float16 (``_fp16``)
and int8 (``_int8``) variants, and onnxruntime sessions over them (``_sessions``). Every name
loads on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurebank.lazy import attach

_LAZY = {"FeatureGraph": "featurebank.extractor.graphs._cut",
         "available_devices": "featurebank.extractor.graphs._sessions",
         "build_feature_graph": "featurebank.extractor.graphs._cut",
         "make_session": "featurebank.extractor.graphs._sessions"}

__all__ = ["FeatureGraph", "available_devices", "build_feature_graph", "make_session"]

if TYPE_CHECKING:
    from featurebank.extractor.graphs._cut import FeatureGraph, build_feature_graph
    from featurebank.extractor.graphs._sessions import available_devices, make_session

__getattr__, __dir__ = attach(__name__, _LAZY)
