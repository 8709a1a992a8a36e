"""``Extractor``: images in, feature vectors out, from a registry name or an ONNX file."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from featurebank.errors import FeaturebankError
from featurebank.export import is_onnx_path
from featurebank.extractor._options import DEVICES
from featurebank.extractor._preprocess import DEFAULT_MAX_PIXELS, DecodeError, decode
from featurebank.options import Interval, Options, check_value
from featurebank.spec import FeatureOptions, FeatureSpec, Preprocessing
from featurebank.spec import feature_options as feature_options_of

log = logging.getLogger(__name__)
_POSITIVE = Interval(int, 1, None)


def resolve_model_path(model: str | Path, input_size: int | None = None) -> Path:
    """An ONNX path for ``model``: the file itself, or the registry model's cached export."""
    if is_onnx_path(str(model)):
        path = Path(model)
        if not path.is_file():
            raise FeaturebankError(f"ONNX file {path} does not exist")
        return path
    from featurebank.export import ensure_exported

    return ensure_exported(str(model), input_size=input_size)


class Extractor:
    """Embed images with a pretrained CNN cut at one or more layers.

    Parameters
    ----------
    features : FeatureOptions, str or path, optional
        What the features are made of: a :class:`featurebank.FeatureOptions`, or a registry
        name / ``.onnx`` path (the other options then come from ``feature_options``).
        Default: the registry's default model cut at ``head``.
    device : {'auto', 'cpu', 'cuda'}
    batch_size : int
        Images per inference call in :meth:`embed`.
    threads : int, optional
        onnxruntime intra-op threads.
    max_pixels : int
        Larger images are refused before decoding (decompression-bomb guard).
    **feature_options
        Fields of :class:`featurebank.FeatureOptions` (``layers``, ``pool``, ``gem_p``,
        ``normalize``, ``precision``, ``calibration``, ``preprocessing``, ``input_size``),
        applied over ``features``.

    Examples
    --------
    >>> ex = Extractor(layers=["blocks.10", "head"])          # doctest: +SKIP
    >>> feats = ex.embed(["cat.jpg", "dog.png"])              # doctest: +SKIP
    >>> feats["head"].shape                                   # doctest: +SKIP
    (2, 1280)
    """

    def __init__(self, features: FeatureOptions | str | Path | None = None, *,
                 device: str = "auto", batch_size: int = 32, threads: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, **feature_options: Any):
        self.options = feature_options_of(features, **feature_options)
        for name, value, constraints in (("device", device, (Options(DEVICES),)),
                                         ("batch_size", batch_size, (_POSITIVE,)),
                                         ("threads", threads, (None, _POSITIVE)),
                                         ("max_pixels", max_pixels, (_POSITIVE,))):
            check_value(name, value, *constraints, owner="Extractor")
        self.device = device
        self.batch_size = batch_size
        self.threads = threads
        self.max_pixels = max_pixels
        self._graph = None
        self._session = None
        self._runner = None

    # the options' fields read like the extractor's own (ex.model, ex.layers, ...)
    @property
    def model(self) -> str:
        return self.options.model

    @property
    def layers(self) -> tuple[str, ...]:
        return self.options.layers

    @property
    def precision(self) -> str:
        return self.options.precision

    # -- building -----------------------------------------------------------------------
    @property
    def graph(self):
        if self._graph is None:
            from featurebank.extractor.graphs._cut import build_feature_graph

            o = self.options
            graph = build_feature_graph(
                resolve_model_path(o.model, o.input_size), list(o.layers), o.pool, o.gem_p,
                o.normalize, o.preprocessing, name=o.model)
            if graph.batch and self.precision != "fp32":
                raise FeaturebankError(
                    f"precision {self.precision!r} needs a model that takes any batch; "
                    f"{o.model} runs only at its own batch of {graph.batch} (its batch axis "
                    f"could not be made dynamic: 'featurebank adopt' logs why), so use fp32")
            if self.precision == "fp16":
                from featurebank.extractor.graphs._fp16 import to_fp16

                graph = replace(graph, model=to_fp16(graph.model))
            elif self.precision == "int8":
                from featurebank.extractor.graphs._int8 import int8_feature_graph

                graph = int8_feature_graph(graph, self._calibration_pixels(graph))
            self._graph = graph
        return self._graph

    def _calibration_pixels(self, graph) -> np.ndarray | str:
        calibration = self.options.calibration
        if isinstance(calibration, str):
            return calibration
        if not calibration:
            raise FeaturebankError(
                "precision 'int8' needs calibration images: Extractor(..., calibration=[50-200 of "
                "your images]); 'featurebank embed --precision int8' samples them from the input")
        pixels = []
        for image in calibration:
            try:
                pixels.append(decode(image, graph.model_spec.preprocessing, self.max_pixels))
            except DecodeError as exc:  # a bad file among the samples must not stop the run
                log.warning("calibration: skipped %s", exc)
        if not pixels:
            raise FeaturebankError("precision 'int8': none of the calibration images decodes")
        return np.stack(pixels)

    @property
    def session(self):
        if self._session is None:
            from featurebank.extractor.graphs._sessions import make_session

            session = make_session(self.graph.model, self.device, self.threads)
            if "CUDAExecutionProvider" in session.get_providers():
                from featurebank.extractor.graphs._fp16 import BoundRunner

                # On CUDA the binding saves a device allocation and copy per batch; on CPU it
                # measured no faster than session.run (benchmarks/gpu_throughput.py).
                self._runner = BoundRunner(session, self.graph.output_names)
            elif self.precision == "fp16":
                # The CPU provider has few float16 kernels: its optimiser casts the graph back
                # to float32 (weights rounded to float16), which costs speed and gains nothing.
                log.warning("precision 'fp16' on CPU computes in float32 with float16-rounded "
                            "weights and runs at about 2/3 of fp32's speed; it is meant for "
                            "device='cuda'")
            self._session = session
        return self._session

    @property
    def specs(self) -> list[FeatureSpec]:
        return self.graph.specs

    @property
    def spec_preprocessing(self) -> Preprocessing:
        return self.graph.model_spec.preprocessing

    @property
    def layer_names(self) -> list[str]:
        return [s.layer for s in self.specs]

    @property
    def output_shapes(self) -> dict[str, tuple[str | int, ...]]:
        return {s.layer: ("N", d) for s, d in zip(self.specs, self.graph.dims, strict=True)}

    # -- running ------------------------------------------------------------------------
    def embed_pixels(self, pixels: np.ndarray) -> list[np.ndarray]:
        """Run prepared uint8 ``[N, H, W, 3]`` pixels; one float32 ``[N, D]`` per layer."""
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        h, w = self.spec_preprocessing.input_size
        if pixels.ndim != 4 or pixels.shape[1:] != (h, w, 3):
            raise FeaturebankError(f"pixels must be uint8 [N, {h}, {w}, 3], got {pixels.shape}")
        if len(pixels) == 0:
            return [np.zeros((0, d), np.float32) for d in self.graph.dims]
        session = self.session  # building it sets up the IOBinding runner on CUDA
        if self._runner is not None:
            return self._runner.run(pixels)
        return session.run(self.graph.output_names, {"pixels": pixels})

    def decode(self, image: Any, name: str | None = None) -> np.ndarray:
        """One image prepared for this model (uint8 ``(H, W, 3)``)."""
        return decode(image, self.spec_preprocessing, self.max_pixels, name)

    def embed(self, images: Any) -> dict[str, np.ndarray]:
        """Embed images (paths, bytes, PIL images or arrays; one or a list).

        Returns a dict layer -> float32 ``[N, D]`` array, whatever the number of layers. An
        image that cannot be decoded raises :class:`featurebank.extractor.DecodeError` naming
        it.
        """
        if not isinstance(images, (list, tuple)) or (
            isinstance(images, tuple) and images and isinstance(images[0], int)
        ):
            images = [images]
        outs: list[list[np.ndarray]] = [[] for _ in self.specs]
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            # an undecodable image is named by its path, else by its position in the input
            pixels = np.stack([
                self.decode(im, None if isinstance(im, (str, Path)) else f"images[{start + i}]")
                for i, im in enumerate(chunk)])
            for acc, arr in zip(outs, self.embed_pixels(pixels), strict=True):
                acc.append(arr)
        arrays = [np.concatenate(a) if a else np.zeros((0, d), np.float32)
                  for a, d in zip(outs, self.graph.dims, strict=True)]
        return dict(zip(self.layer_names, arrays, strict=True))

    # -- pickling: sessions are rebuilt lazily where the object lands -----------------
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_graph"] = None
        state["_session"] = None
        state["_runner"] = None
        if self._graph is not None and self.specs[0].quantization:
            # the cached int8 graph's tag, not the calibration images: small, same vectors
            state["options"] = self.options.replace(calibration=self.specs[0].quantization)
        return state

    def __repr__(self) -> str:
        o = self.options
        return (f"Extractor(model={o.model!r}, layers={list(o.layers)!r}, pool={o.pool!r}"
                f"{', normalize=True' if o.normalize else ''}"
                f"{f', precision={o.precision!r}' if o.precision != 'fp32' else ''})")
