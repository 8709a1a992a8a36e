"""Export parity: featurebank's own EfficientNet-Lite vs the reference package, ONNX vs torch.

Usage::

    python -m benchmarks.export_parity [--models efficientnet_lite0 ...]

On real photos (scikit-image ``chelsea``, ``coffee``, ``astronaut``, ``rocket``, scikit-learn
``china``), prepared as each model's spec says, the logits of (a) featurebank's torch
architecture with the published weights against the ``efficientnet-lite-pytorch`` reference
package with the same weights, and (b) the exported ONNX graph (onnxruntime, CPU) against
featurebank's torch module: the largest absolute difference over every logit, and whether the
top-1 classes agree. Writes ``benchmarks/results/export_parity.json``.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks._common import write_result

MODELS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def photos() -> dict[str, np.ndarray]:
    from skimage import data
    from sklearn.datasets import load_sample_images

    return {"chelsea": data.chelsea(), "coffee": data.coffee(), "astronaut": data.astronaut(),
            "rocket": data.rocket(), "china": load_sample_images().images[0]}


def prepared(model: str, images: dict[str, np.ndarray]) -> np.ndarray:
    """float32 NCHW, normalised as the model's spec says (decode does the resize and crop)."""
    from featurebank.export import get_model_entry
    from featurebank.extractor import decode

    pre = get_model_entry(model).preprocessing
    px = np.stack([decode(a, pre) for a in images.values()]).astype(np.float32) / 255.0
    x = (px - np.array(pre.mean, np.float32)) / np.array(pre.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def parity(model: str, images: dict[str, np.ndarray]) -> dict:
    import onnxruntime as ort
    import torch

    from featurebank.export import build_torch_model, ensure_exported, get_model_entry

    x = prepared(model, images)
    ours = build_torch_model(model).eval()
    with torch.no_grad():
        torch_logits = ours(torch.from_numpy(x)).numpy()
    row = {"images": list(images), "input": list(x.shape)}
    try:
        import efficientnet_lite_pytorch as ref_pkg

        weights = get_model_entry(model).default_weights()
        ref = ref_pkg.EfficientNet.from_pretrained(model.replace("_", "-"), weights_path=weights)
        with torch.no_grad():
            ref_logits = ref.eval()(torch.from_numpy(x)).numpy()
        row["max_abs_diff_vs_reference_package"] = float(np.abs(torch_logits - ref_logits).max())
        row["top1_agree_reference"] = bool((torch_logits.argmax(1) == ref_logits.argmax(1)).all())
    except ImportError:
        row["max_abs_diff_vs_reference_package"] = None  # efficientnet-lite-pytorch absent
    sess = ort.InferenceSession(str(ensure_exported(model)), providers=["CPUExecutionProvider"])
    (onnx_logits,) = sess.run(["logits"], {"input": x})
    row["max_abs_diff_onnx_vs_torch"] = float(np.abs(onnx_logits - torch_logits).max())
    row["top1_agree_onnx"] = bool((onnx_logits.argmax(1) == torch_logits.argmax(1)).all())
    row["max_abs_logit"] = float(np.abs(torch_logits).max())
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--out", default="export_parity")
    args = ap.parse_args(argv)
    images = photos()
    rows = {}
    for model in args.models:
        rows[model] = parity(model, images)
        r = rows[model]
        print(f"{model}: own vs reference package max |diff| "
              f"{r['max_abs_diff_vs_reference_package']}, ONNX vs torch "
              f"{r['max_abs_diff_onnx_vs_torch']:.2e} (logits up to {r['max_abs_logit']:.1f})",
              flush=True)
    write_result(args.out, {"benchmark": "export_parity", "models": rows})
    return rows


if __name__ == "__main__":
    main()
