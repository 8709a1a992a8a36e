"""Rows of the conformance table (``python -m benchmarks.zoo``) for the classic model-zoo graphs
the onnx package ships structure-only under ``onnx/backend/test/data/light/`` (IR version 3,
opset 9, a fixed batch of 1, weights made by ``ConstantOfShape``): row ``onnx-zoo:NAME``,
variant ``light``.

Each is adopted as it comes (BGR, 0-255: the Caffe2 conventions), then embedded at every
friendly cut; the parity is against the untouched graph's own tensors, run one image at a time
(the weights are constants, so it checks structure, never accuracy). The cell records the
friendly names, the tensors and shapes of ``head`` and ``pool``, and the naming rule the
catalogue needed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnx

PREFIX = "onnx-zoo:"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
ROWS = [PREFIX + p.stem.removeprefix("light_") for p in sorted(LIGHT.glob("light_*.onnx"))
        if not p.stem.endswith("_output_0")]


def _original(src: Path, tensors: list[str], pixels: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    proto = onnx.load(str(src))
    have = {o.name for o in proto.graph.output}
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t)
                              for t in dict.fromkeys(tensors) if t not in have)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    bgr = pixels[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32)
    feed = session.get_inputs()[0].name
    runs = [session.run(tensors, {feed: bgr[i:i + 1]}) for i in range(len(bgr))]
    return [np.concatenate([r[k] for r in runs]) for k in range(len(tensors))]


def run_light_row(name: str, folder: Path) -> dict:
    """The ``light`` cell of ``onnx-zoo:NAME``."""
    from featurebank.export import adopt, read_onnx_metadata
    from featurebank.extractor import Extractor

    src = LIGHT / f"light_{name.removeprefix(PREFIX)}.onnx"
    out = folder / f"{src.stem}.adopted.onnx"
    started = time.perf_counter()
    try:
        spec = adopt(src, out, pixel_range=255, channel_order="bgr")
        info = read_onnx_metadata(out)
        friendly = [la for la in info.layers if la.name != la.tensor]
        pixels = np.random.default_rng(0).integers(0, 256, (2, *spec.preprocessing.input_size, 3),
                                                   np.uint8)
        ex = Extractor(str(out), layers=[la.name for la in friendly], device="cpu")
        vectors = ex.embed_pixels(pixels)
        refs = _original(src, [la.tensor for la in friendly], pixels)
        parity = {}
        for la, got, ref in zip(friendly, vectors, refs, strict=True):
            want = ref.reshape(len(ref), -1) if ref.ndim == 2 else ref.mean(axis=(2, 3))
            parity[la.name] = float(np.abs(got - want).max()) / max(1.0, float(np.abs(want).max()))
        stages = [la.name for la in friendly if la.name.startswith("stage.")]
        cell = {"how": "adopted", "stages_found": len(stages), "stages_expected": None,
                "ir_version": onnx.load(str(src), load_external_data=False).ir_version,
                "names": [la.name for la in friendly], "naming": spec.naming,
                **{key: {"tensor": la.tensor, "shape": list(la.shape)}
                   for la in friendly for key in ("head", "pool") if la.name == key},
                "parity": parity, "worst_parity": max(parity.values())}
        last = Extractor(str(out), layers=["pool" if "pool" in cell else "head"], device="cpu")
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            last.embed_pixels(np.concatenate([pixels] * 4))
            times.append(time.perf_counter() - t0)
        cell["images_per_s"] = round(8 / min(times), 1)
        cell["load_1min"] = round(os.getloadavg()[0], 2)
    except Exception as exc:  # noqa: BLE001 - a refusal is a result of the table
        cell = {"how": "refused", "reason": f"{type(exc).__name__}: {exc}"[:400]}
    cell["seconds"] = round(time.perf_counter() - started, 1)
    return {"light": cell}


def light_note(cell: dict) -> str:
    """What the table says of a light cell: where pool and head are, and the rule."""
    def where(key: str) -> str:
        at = cell.get(key)
        return f"{key} {'x'.join(map(str, at['shape']))}" if at else f"no {key}"

    return (f"IR {cell.get('ir_version')}, structure only (parity with the graph's own tensors); "
            f"{where('head')}, {where('pool')}; naming rule {cell.get('naming')}")
