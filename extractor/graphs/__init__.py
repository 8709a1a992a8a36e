"""Feature graphs: the ONNX model cut at layers and pooled (``_cut``), its float16 (``_fp16``)
and int8 (``_int8``) variants, and onnxruntime sessions over them (``_sessions``)."""

from featurebank.extractor.graphs._cut import FeatureGraph, build_feature_graph
from featurebank.extractor.graphs._sessions import available_devices, make_session

__all__ = ["FeatureGraph", "available_devices", "build_feature_graph", "make_session"]
