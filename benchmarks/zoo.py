"""The conformance table: timm and torchvision backbones, exported and adopted as they come.

Run in the zoo environment (``make zoo``)::

    .venv-zoo/bin/python -m benchmarks.zoo                  # every row; writes results/zoo.json
    .venv-zoo/bin/python -m benchmarks.zoo --rows timm:resnet50 --variants export,onnx-b1 \
        --out /tmp/check.json                               # a subset, elsewhere

Rows: each architecture with random weights saved to a file (nothing downloads). Cells:

- ``export``: ``featurebank export NAME --weights FILE`` (dynamic batch);
- ``onnx`` (torch's dynamo exporter, opset 18, a dynamic batch) and ``onnx-b1`` (the
  TorchScript exporter, opset 14, a fixed batch of 1), and for a ResNet, a MobileNet and a
  ConvNeXt also ``fp16``, ``nhwc``, ``opaque`` (benchmarks/_zoo_variants.py): plain ONNX
  files, adopted with the model's conventions stated.

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
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import write_result
from benchmarks._zoo_light import PREFIX as LIGHT_PREFIX
from benchmarks._zoo_light import ROWS as LIGHT_ROWS
from benchmarks._zoo_light import light_note, run_light_row

ROWS = ["timm:resnet50", "timm:mobilenetv3_large_100", "timm:convnext_tiny",
        "timm:efficientnet_b0", "timm:regnety_008", "timm:densenet121",
        "timm:vit_small_patch16_224", "torchvision:resnet50", "torchvision:mobilenet_v3_large",
        "torchvision:convnext_tiny", "torchvision:vit_b_16", "torchvision:densenet121",
        "torchvision:alexnet", "torchvision:vgg16", *LIGHT_ROWS]
#: Rows whose ``pool`` naming rule 5 moved (a fully connected head: fc7 after its ReLU): their
#: cells check ``pool`` against the torch module's classifier input too, not only the stages.
RULE5 = {"torchvision:alexnet", "torchvision:vgg16"}
#: Rows that get every variant (a ResNet, a MobileNet, a ConvNeXt).
FULL = {"timm:resnet50", "timm:mobilenetv3_large_100", "timm:convnext_tiny"}
BASIC = ("export", "onnx", "onnx-b1")  # featurebank's export; a dynamic batch; a batch of 1
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
        out[n] = (t if t.dim() == 2 else t.mean((2, 3)) if t.dim() == 4
                  else t[:, pre.prefix_tokens:].mean(1)).numpy()
    return out


def _expected(base, with_pool: bool = False) -> dict[str, tuple]:
    import torch

    size = base.preprocessing.input_size
    with torch.no_grad():
        feats = base.features(torch.zeros(1, 3, *size))
    return {n: tuple(feats[n].shape[1:]) for n in [*base.cuts, *(["pool"] if with_pool else [])]}


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
        got = la.shape if (la.layout or "NCHW") in ("NCHW", "tokens", "NC") else (la.shape[2], *la.shape[:2])
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
        cell["load_1min"] = round(os.getloadavg()[0], 2)  # what else ran while it was timed
    return cell


def run_row(name: str, variants: tuple[str, ...], folder: Path) -> dict:
    import torch

    from benchmarks._zoo_variants import adopt_stating, build
    from featurebank.export import build_torch_model, export_onnx

    arch = name.split(":")[1]
    weights = folder / f"{arch}.pth"
    torch.save(_library_model(name).state_dict(), weights)
    base = build_torch_model(name, weights)
    pre = base.preprocessing
    tokens = pre.prefix_tokens is not None
    expected = _expected(base, with_pool=name in RULE5)
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
                adopt_stating(src, out, pre, nhwc=variant == "nhwc")
                how = "adopted"
            cell = {"how": how, **_cell(out, expected, ref, pixels, tokens,
                                        TOL.get(variant, DEFAULT_TOL))}
        except Exception as exc:  # noqa: BLE001 - a refusal is a result of the table
            cell = {"how": "refused", "reason": f"{type(exc).__name__}: {exc}"[:400]}
        cell["seconds"] = round(time.perf_counter() - started, 1)
        for done in folder.glob(f"{arch}.{variant}.*"):  # the cell's files: a row's would
            done.unlink()  # take gigabytes (each variant exports its own source)
        row[variant] = cell
        print(f"{name:32s} {variant:8s} {_show(cell)}", flush=True)
    return row


def _show(cell: dict) -> str:
    if cell["how"] == "refused":
        return f"refused: {cell['reason'][:140]}"
    parity = cell.get("worst_parity")
    shown = "-" if parity is None else f"{parity:.1e}"
    return (f"{cell['how']:8s} stages {cell['stages_found']}/{cell['stages_expected']} "
            f"parity {shown} {cell.get('images_per_s', '-')} img/s "
            f"(load {cell.get('load_1min', '-')})")


#: Why a cell is what it is, where the figures alone do not say.
NOTES = {
    "fp16": "float16 weights: the parity is their rounding, not featurebank's",
    "missing": "{} not named from ONNX with the library stage's shape (see the text below the "
               "table)",
    "other": "{} (relative difference) named on another tensor of the library stage's shape: "
             "not counted as found; see the text below the table",
    "vit-adopted": "no blocks named: the graph is no pre-norm ViT chain (naming rule 4); its "
                   "token tensors are cut by name once prefix_tokens is stated "
                   "(your-own-model.md)",
    "rule5": "pool (fc7 after its ReLU, naming rule 5) counted with the stages",
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
            if variant == "light":
                note = light_note(c)
            elif name in RULE5:
                note = NOTES["rule5"]
            if "vit" in name and c["how"] == "adopted" and not c["stages_found"]:
                note = NOTES["vit-adopted"]
            elif c.get("missing"):
                note = "; ".join(filter(None, [note, NOTES["missing"].format(
                    ", ".join(c["missing"]))]))
            if c.get("other_tensor"):
                note = "; ".join(filter(None, [note, NOTES["other"].format(", ".join(
                    f"{n} ({v:.1g})" for n, v in c["other_tensor"].items()))]))
            expected = "" if c["stages_expected"] is None else f"/{c['stages_expected']}"
            lines.append(f"| {name} | {variant} | {c['how']} | {c['stages_found']}{expected}"
                         f" | {'-' if p is None else f'{p:.1e}'} | "
                         f"{c.get('images_per_s', '-')} | {note} |")
    loads = [c["load_1min"] for row in table.values() for c in row.values() if "load_1min" in c]
    if loads:
        lines += ["", f"images/s: onnxruntime on {os.cpu_count()} cores, timed at a 1-minute "
                      f"load average of {min(loads):.1f} to {max(loads):.1f} (median "
                      f"{sorted(loads)[len(loads) // 2]:.1f})."]
    return "\n".join(lines)


def _run_row_in(name: str, variants: str | None, folder: Path) -> dict:
    """One row in its own folder, removed after (the ONNX files of a row take gigabytes)."""
    import shutil

    folder.mkdir(parents=True)
    # adopt keeps a copy of each file in the model cache: a private one, removed with the row
    os.environ["FEATUREBANK_CACHE"] = str(folder / "cache")
    try:
        if name.startswith(LIGHT_PREFIX):
            return run_light_row(name, folder)
        return run_row(name, tuple(variants.split(",")) if variants else
                       (ALL if name in FULL else BASIC), folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_rows(rows: list[str], variants: str | None, jobs: int, tmp: Path):
    """Yield ``(name, row)`` as rows finish; with ``jobs`` > 1, rows run in worker processes,
    the longest first (the full-variant rows, then the transformers)."""
    folders = {n: tmp / n.replace(":", "_") for n in rows}
    if jobs <= 1:
        for name in rows:
            yield name, _run_row_in(name, variants, folders[name])
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    order = sorted(rows, key=lambda n: (n not in FULL, "vit" not in n))
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_run_row_in, n, variants, folders[n]): n for n in order}
        for future in as_completed(futures):
            yield futures[future], future.result()


DOCS = Path(__file__).resolve().parents[1] / "docs" / "your-own-model.md"
MARK = "<!-- zoo table: written from benchmarks/results/zoo.json -->"


def write_docs(table_md: str, path: Path = DOCS) -> None:
    """Put ``table_md`` in place of the table under :data:`MARK` in ``path``."""
    text = path.read_text()
    before, mark, after = text.partition(MARK)
    if not mark:
        raise SystemExit(f"{path}: no line {MARK!r} to put the table under")
    lines = after.lstrip("\n").split("\n")
    end = next((i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))
    if lines[end:end + 2] and lines[end] == "" and lines[end + 1].startswith("images/s:"):
        end += 2  # the load line under the table
    path.write_text(before + mark + "\n\n" + table_md + "\n" + "\n".join(lines[end:]))
    print(f"wrote the table into {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--variants", default=None, help="comma-separated (default: all that apply)")
    ap.add_argument("--out", default="zoo")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="combine the rows of earlier runs (run in parallel) into --out; no run")
    ap.add_argument("--jobs", type=int, default=1,
                    help="rows run at once, each in its own process (images/s then share "
                         "the cores: the load average recorded with each cell says how much)")
    ap.add_argument("--docs", action="store_true",
                    help="put the table of --out (a JSON written before) into "
                         "docs/your-own-model.md; no run")
    args = ap.parse_args(argv)
    if args.docs:
        out = Path(args.out) if Path(args.out).suffix == ".json" else \
            Path(__file__).parent / "results" / f"{args.out}.json"
        write_docs(json.loads(out.read_text())["markdown"])
        return 0
    if args.merge:
        rows: dict = {}
        runs = {}
        for path in args.merge:
            earlier = json.loads(Path(path).read_text())
            if "merged_from" in earlier:  # a merged table: keep the runs it was merged from
                runs.update(earlier["merged_from"])
            else:
                runs[Path(path).name] = {"run": earlier.get("run"), "machine": earlier.get("machine"),
                                         "cells": {n: list(r) for n, r in earlier["table"].items()}}
            for name, row in earlier["table"].items():
                rows.setdefault(name, {}).update(row)  # a later run's cells win
        merged = {n: {v: rows[n][v] for v in [*ALL, *rows[n]] if v in rows[n]}
                  for n in [*ROWS, *rows] if n in rows}
        write_result(args.out, {"table": merged, "markdown": markdown(merged),
                                "merged_from": runs})
        print(markdown(merged))
        return 0
    rows = args.rows.split(",")
    run = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "nice": os.nice(0),
           "jobs": args.jobs, "load_at_start": os.getloadavg()}
    table: dict = {}
    with tempfile.TemporaryDirectory(prefix="fb-zoo-") as tmp:
        for name, row in _run_rows(rows, args.variants, args.jobs, Path(tmp)):
            table[name] = row
            table = {n: table[n] for n in rows if n in table}  # the order asked for
            # after every row: a long run that is stopped keeps the rows it finished
            run["last_row_done"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            write_result(args.out, {"table": table, "markdown": markdown(table), "run": run})
    print(markdown(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
