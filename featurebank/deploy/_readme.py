"""``FILE.README.md``: what a deployed file takes, gives, and comes from, for the person who
runs it without featurebank."""

from __future__ import annotations

import json
from typing import Any

_RULES = {"featurebank": "the longer side is rounded to the nearest pixel and the crop "
                          "offsets are floor((side - crop) / 2).",
          "torchvision": "as torchvision's Resize(size) + CenterCrop (the longer side "
                         "truncated, the offsets rounded half to even)."}


def readme_text(deployable: Any, filename: str) -> str:
    d = deployable.description
    pre, lineage = d["preprocessing"], d["lineage"]
    h, w = pre["center_crop"]
    graph = pre["in_graph"]
    classes = "\n".join(f"| {i} | {name} |" for i, name in enumerate(d["classes"]))
    return f"""# {filename}

A {d["kind"]} classifier on {lineage["model"]} features, written by `featurebank deploy`
(featurebank {d["featurebank_version"]}). One ONNX graph (opset {d["opset"]}, no ZipMap, no
sequence or map types): pixels in, probabilities out. It runs in plain onnxruntime, Triton or
KServe; featurebank, scikit-learn and joblib are not needed.

## Input: `pixels`, uint8 `[N, {h}, {w}, 3]` (NHWC, RGB, 0-255)

Resizing stays outside the graph. Prepare each image as featurebank does:

1. Decode; apply the EXIF orientation; convert to RGB (alpha composited on
   RGB {tuple(pre["background"])}).
2. Resize so the shorter side is {pre["resize_shorter_side_to"]} pixels ({pre["interpolation"]}); {_RULES[pre["resize_rule"]]}
3. Center-crop {h}x{w}. Keep uint8: do not normalise.

The graph itself reorders channels ({graph["channel_order"]}), scales to 0-{graph["pixel_range"]}, subtracts
mean {graph["mean"]}, divides by std {graph["std"]} and lays the tensor out as {graph["layout"].upper()}.

## Outputs

- `probabilities`: float32 `[N, {len(d["classes"])}]`, one column per class below.
- `label`: int64 `[N]`, the index of the most likely class.

| index | class |
|---|---|
{classes}

## Lineage

```json
{json.dumps({k: v for k, v in lineage.items() if k != "specs"}, indent=2)}
```

The full feature specs and preprocessing are in the file's metadata, key `featurebank.deploy`.

## Running it

```python
import onnxruntime as ort
session = ort.InferenceSession("{filename}")
probabilities, label = session.run(["probabilities", "label"], {{"pixels": pixels}})
```
"""
