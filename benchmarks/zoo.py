"""The conformance table: timm and torchvision backbones, exported and adopted as they come.

Run in the zoo environment (``make zoo``)::

    .venv-zoo/bin/python -m benchmarks.zoo                  # every row; writes results/zoo.json
    .venv-zoo/bin/python -m benchmarks.zoo --rows timm:resnet50 --variants export,onnx-b1

Rows: each architecture with random weights saved to a file (nothing downloads). Cells:

- ``export``: ``featurebank export NAME --weights FILE`` (dynamic batch);
- ``onnx-b1`` (opset 14, a fixed batch of 1), and for a ResNet, a MobileNet and a ConvNeXt
  also ``onnx`` (opset 18, dynamic batch), ``fp16``, ``nhwc``, ``opaque``
  (benchmarks/_zoo_variants.py): plain ONNX files, adopted with the model's conventions stated.

Each cell records how the file came in (``exported`` / ``adopted`` / the refusal), the friendly
stages found / expected (the torch model's ``stage.K`` / ``blocks.K`` that the file names, with
the same shape and vectors within 1e-4, 1e-2 for float16 weights; a name on another tensor of
that shape is listed apart with its difference), the worst parity over the stages found
(max|a - b| / max(1, max|b|) per image, featurebank's vectors against the torch module's own
activations on the same decoded pixels, average-pooled; token cuts mean-pooled over the patch
tokens), and embed images/s (onnxruntime, the whole
feature graph at the last stage, batch 16, best of 3).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import write_result

ROWS = ["timm:resnet50", "timm:mobilenetv3_large_100", "timm:convnext_tiny",
        "timm:efficientnet_b0", "timm:regnety_008", "timm:densenet121",
        "timm:vit_small_patch16_224", "torchvision:resnet50", "torchvision:mobilenet_v3_large",
        "torchvision:convnext_tiny", "torchvision:vit_b_16"]
#: Rows that get every variant (a ResNet, a MobileNet, a ConvNeXt).
FULL = {"timm:resnet50", "timm:mobilenetv3_large_100", "timm:convnext_tiny"}
BASIC = ("export", "onnx-b1")  # a dynamic batch (featurebank's export) and a fixed batch of 1
ALL = ("export", "onnx", "onnx-b1", "fp16", "nhwc", "opaque")


def _library_model(name: str):
    lib, arch = name.split(":")
    if lib == "timm":
        import timm

        return timm.create_model(arch, pretrained=False).eval()
    import torchvision

    return torchvision.models.get_model(arch, weights=None).eval()


def _photos(pre, n: int = 4) -> np.ndarray:
    from skimage import data

    from featurebank.extractor import decode

    images = [getattr(data, k)() for k in ("chelsea", "coffee", "astronaut", "rocket")]
    return np.stack([decode(images[i % len(images)], pre) for i in range(n)])


def _reference(base, pixels: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """The torch module's activations at ``names``, pooled, from the same pixels."""
    import torch

    pre = base.preprocessing
    x = (pixels.astype(np.float32) / 255.0 - np.array(pre.mean, np.float32)) / np.array(pre.std, np.float32)
    with torch.no_grad():
        feats = base.features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    out = {}
    for n in names:
        t = feats[n]
        out[n] = (t.mean((2, 3)) if t.dim() == 4 else t[:, pre.prefix_tokens:].mean(1)).numpy()
    return out


def _expected(base) -> dict[str, tuple]:
    import torch

    size = base.preprocessing.input_size
    with torch.no_grad():
        feats = base.features(torch.zeros(1, 3, *size))
    return {n: tuple(feats[n].shape[1:]) for n in base.cuts}


def _adopt(src: Path, dst: Path, pre, nhwc: bool) -> None:
    from featurebank.export import adopt

    conv = {k: v for k, v in pre.to_dict().items() if k not in ("background",)}
    conv.update(pixel_range=1, channel_order="rgb", layout="nhwc" if nhwc else "nchw")
    conv_file = dst.with_suffix(".json")
    conv_file.write_text(json.dumps(conv))
    adopt(src, dst, conv_file)


#: Parity that counts as the same tensor; float16 weights round at about 1e-3.
TOL = {"fp16": 1e-2}
DEFAULT_TOL = 1e-4


def _cell(path: Path, expected: dict, ref: dict, pixels: np.ndarray, tokens: bool,
          tol: float = DEFAULT_TOL) -> dict:
    from featurebank.export import read_onnx_metadata
    from featurebank.extractor import Extractor
    from featurebank.spec import FeatureOptions

    info = read_onnx_metadata(path)
    have = {la.name: la for la in info.layers}
    named = []  # expected names the file has, with the same shape
    for name, shape in expected.items():
        la = have.get(name)
        if la is None:
            continue
        got = la.shape if (la.layout or "NCHW") in ("NCHW", "tokens") else (la.shape[2], *la.shape[:2])
        if tuple(got) == tuple(shape):
            named.append(name)
    pool = "mean" if tokens else "avg"
    parity = {}
    if named:
        vectors = Extractor(FeatureOptions(model=str(path), layers=tuple(named), pool=pool)) \
            .embed_pixels(pixels)
        parity = {n: max(float(np.abs(a - b).max() / max(1.0, float(np.abs(b).max())))
                         for a, b in zip(v, ref[n], strict=True))
                  for n, v in zip(named, vectors, strict=True)}
    found = [n for n in named if parity[n] <= tol]
    cell = {"stages_found": len(found), "stages_expected": len(expected),
            "missing": [n for n in expected if n not in named],
            # a name the file gives another tensor of the same shape (a block output before the
            # library's final norm, say): not counted as found
            "other_tensor": {n: parity[n] for n in named if n not in found},
            "parity": parity}
    if found:
        cell["worst_parity"] = max(parity[n] for n in found)
        last = Extractor(FeatureOptions(model=str(path), layers=(found[-1],), pool=pool))
        batch = np.concatenate([pixels] * 4)
        last.embed_pixels(batch[:2])
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            last.embed_pixels(batch)
            times.append(time.perf_counter() - t0)
        cell["images_per_s"] = round(len(batch) / min(times), 1)
    return cell


def run_row(name: str, variants: tuple[str, ...], folder: Path) -> dict:
    import torch

    from benchmarks._zoo_variants import build
    from featurebank.export import build_torch_model, export_onnx

    arch = name.split(":")[1]
    weights = folder / f"{arch}.pth"
    torch.save(_library_model(name).state_dict(), weights)
    base = build_torch_model(name, weights)
    pre = base.preprocessing
    tokens = pre.prefix_tokens is not None
    expected = _expected(base)
    pixels = _photos(pre)
    ref = _reference(base, pixels, list(expected))
    row = {}
    for variant in variants:
        out = folder / f"{arch}.{variant}.onnx"
        started = time.perf_counter()
        try:
            if variant == "export":
                export_onnx(name, out, weights=weights)
                how = "exported"
            else:
                src = build(variant, base.model, pre.input_size[0], folder / f"{arch}.{variant}.src.onnx")
                _adopt(src, out, pre, nhwc=variant == "nhwc")
                how = "adopted"
            cell = {"how": how, **_cell(out, expected, ref, pixels, tokens,
                                        TOL.get(variant, DEFAULT_TOL))}
        except Exception as exc:  # noqa: BLE001 - a refusal is a result of the table
            cell = {"how": "refused", "reason": f"{type(exc).__name__}: {exc}"[:400]}
        cell["seconds"] = round(time.perf_counter() - started, 1)
        row[variant] = cell
        print(f"{name:32s} {variant:8s} {_show(cell)}", flush=True)
    return row


def _show(cell: dict) -> str:
    if cell["how"] == "refused":
        return f"refused: {cell['reason'][:140]}"
    parity = cell.get("worst_parity")
    shown = "-" if parity is None else f"{parity:.1e}"
    return (f"{cell['how']:8s} stages {cell['stages_found']}/{cell['stages_expected']} "
            f"parity {shown} {cell.get('images_per_s', '-')} img/s")


#: Why a cell is what it is, where the figures alone do not say.
NOTES = {
    "fp16": "float16 weights: the parity is their rounding, not featurebank's",
    "missing": "{} not named from ONNX: the graph rule ends a resolution at its last residual "
               "merge; the library's stage ends at a later block without one (or a 1x1 conv)",
    "other": "{} (relative difference) named on another tensor of the library stage's shape: "
             "not counted as found; see the text below the table",
    "vit-adopted": "no blocks named: the graph is no pre-norm ViT chain (naming rule 4); its "
                   "token tensors are cut by name once prefix_tokens is stated "
                   "(your-own-model.md)",
}


def markdown(table: dict) -> str:
    """The table as docs/your-own-model.md shows it."""
    lines = ["| model | variant | how | stages | worst parity | images/s | note |",
             "|---|---|---|---|---|---|---|"]
    for name, row in table.items():
        for variant, c in row.items():
            if c["how"] == "refused":
                lines.append(f"| {name} | {variant} | refused | | | | {c['reason'][:160]} |")
                continue
            p = c.get("worst_parity")
            note = NOTES.get(variant, "")
            if "vit" in name and c["how"] == "adopted" and not c["stages_found"]:
                note = NOTES["vit-adopted"]
            elif c.get("missing"):
                note = "; ".join(filter(None, [note, NOTES["missing"].format(
                    ", ".join(c["missing"]))]))
            if c.get("other_tensor"):
                note = "; ".join(filter(None, [note, NOTES["other"].format(", ".join(
                    f"{n} ({v:.1g})" for n, v in c["other_tensor"].items()))]))
            lines.append(f"| {name} | {variant} | {c['how']} | {c['stages_found']}/"
                         f"{c['stages_expected']} | {'-' if p is None else f'{p:.1e}'} | "
                         f"{c.get('images_per_s', '-')} | {note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--variants", default=None, help="comma-separated (default: all that apply)")
    ap.add_argument("--out", default="zoo")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="combine the rows of earlier runs (run in parallel) into --out; no run")
    args = ap.parse_args(argv)
    if args.merge:
        rows: dict = {}
        for path in args.merge:
            for name, row in json.loads(Path(path).read_text())["table"].items():
                rows.setdefault(name, {}).update(row)  # a later run's cells win
        merged = {n: rows[n] for n in [*ROWS, *rows] if n in rows}
        write_result(args.out, {"table": merged, "markdown": markdown(merged),
                                "merged_from": [Path(p).name for p in args.merge]})
        print(markdown(merged))
        return 0
    table = {}
    with tempfile.TemporaryDirectory(prefix="fb-zoo-") as tmp:
        for name in args.rows.split(","):
            variants = tuple(args.variants.split(",")) if args.variants else \
                (ALL if name in FULL else BASIC)
            table[name] = run_row(name, variants, Path(tmp))
            # after every row: a long run that is stopped keeps the rows it finished
            write_result(args.out, {"table": table, "markdown": markdown(table)})
    print(markdown(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
