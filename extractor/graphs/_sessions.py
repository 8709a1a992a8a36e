"""onnxruntime sessions: device choice, threads, and a cache of optimised graphs.

Full graph optimisation of EfficientNet takes a noticeable share of start-up; the optimised
model is saved next to the export cache, keyed by the graph's digest, and later sessions load
it with optimisation already done.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import onnx
import onnxruntime as ort

from featurebank.errors import FeaturebankError
from featurebank.export import cache_dir
from featurebank.extractor._options import DEVICES

log = logging.getLogger(__name__)


def available_devices() -> list[str]:
    """``cuda`` when onnxruntime has the CUDA provider, and always ``cpu``."""
    providers = ort.get_available_providers()
    return (["cuda"] if "CUDAExecutionProvider" in providers else []) + ["cpu"]


def providers_for(device: str) -> list:
    if device not in DEVICES:
        raise FeaturebankError(f"device must be one of {DEVICES}, got {device!r}")
    available = ort.get_available_providers()
    if device == "cpu" or (device == "auto" and "CUDAExecutionProvider" not in available):
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise FeaturebankError(
            "device 'cuda' asked for, but onnxruntime has no CUDA provider here; install "
            "featurebank[gpu] (onnxruntime-gpu) on a machine with an NVIDIA GPU, or use device 'cpu'")
    chosen: list = []
    if "TensorrtExecutionProvider" in available and os.environ.get("FEATUREBANK_TENSORRT") == "1":
        chosen.append(("TensorrtExecutionProvider", {"trt_fp16_enable": True,
                                                     "trt_engine_cache_enable": True}))
    chosen += [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "EXHAUSTIVE"}),
               "CPUExecutionProvider"]
    return chosen


def session_options(threads: int | None = None, optimized_path: Path | None = None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    # Decoding threads run beside inference: spinning inference threads would steal their cores.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    opts.log_severity_level = 3
    return opts


#: an optimised graph is kept only up to this multiple of its source's size (plus a floor): a
#: structure-only graph whose weights ConstantOfShape makes (the onnx package's model-zoo
#: copies) folds into hundreds of MB, which would fill the cache for a few seconds saved
KEEP_OPTIMIZED_RATIO, KEEP_OPTIMIZED_FLOOR = 2, 16 << 20


def _worth_keeping(optimized_bytes: int, source_bytes: int) -> bool:
    return optimized_bytes <= KEEP_OPTIMIZED_RATIO * source_bytes + KEEP_OPTIMIZED_FLOOR


def make_session(
    model: onnx.ModelProto | str | Path,
    device: str = "auto",
    threads: int | None = None,
    optimized_cache: bool = True,
) -> ort.InferenceSession:
    """An inference session for ``model`` on ``device`` (``auto`` prefers CUDA).

    Parameters
    ----------
    model : ModelProto or path
        The (feature) graph.
    device : {'auto', 'cpu', 'cuda'}
    threads : int, optional
        Intra-op threads; default: all cores.
    optimized_cache : bool
        On CPU, reuse a saved optimised graph keyed by the model's digest (kept only when it
        is not much larger than the graph itself: see ``KEEP_OPTIMIZED_RATIO``).
    """
    providers = providers_for(device)
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else Path(model).read_bytes()
    cpu_only = providers == ["CPUExecutionProvider"]
    if optimized_cache and cpu_only:
        digest = hashlib.sha256(data).hexdigest()[:20]
        folder = cache_dir() / "optimized"
        cached = folder / f"{digest}-{ort.__version__}.onnx"
        if cached.exists():
            opts = session_options(threads)
            # Already optimised: skip the expensive passes, keep the cheap ones.
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            try:
                return ort.InferenceSession(str(cached), opts, providers=providers)
            except Exception:  # a damaged cache entry: rebuild it below
                cached.unlink(missing_ok=True)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{digest}.{os.getpid()}.tmp.onnx"
            session = ort.InferenceSession(data, session_options(threads, tmp), providers=providers)
            if _worth_keeping(tmp.stat().st_size, len(data)):
                os.replace(tmp, cached)
            else:  # constants folded out of a small graph (weights made by ConstantOfShape)
                tmp.unlink(missing_ok=True)
            return session
        except OSError as exc:  # read-only cache: optimise in memory every time
            log.debug("optimised-model cache unavailable: %s", exc)
    return ort.InferenceSession(data, session_options(threads), providers=providers)
