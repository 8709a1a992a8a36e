"""``featurebank export``, ``models`` and ``layers``: the model side of the flow."""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("export", help="export a registry model to a self-describing ONNX file",
                       description="Write MODEL as ONNX with its spec and layer catalogue inside. "
                       "The file alone is enough to embed images (no torch needed).")
    p.add_argument("model", metavar="MODEL", help="registry name, e.g. efficientnet_lite0")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p.add_argument("--weights", metavar="STATE_DICT",
                   help="state dict of the same architecture (e.g. fine-tuned); default: ImageNet")
    p.add_argument("--input-size", type=int, metavar="N",
                   help="square input side (default: the model's pretrained size)")
    p.set_defaults(func=run_export)

    p = sub.add_parser("models", help="list the models that can be exported")
    p.set_defaults(func=run_models)

    p = sub.add_parser("layers", help="list the layers a model can be cut at",
                       description="MODEL is a registry name (exported into the cache on first "
                       "use) or an .onnx file; foreign ONNX files list candidate tensors.")
    p.add_argument("model", metavar="MODEL|FILE.onnx")
    p.add_argument("--json", action="store_true", help="print the layers as JSON")
    p.set_defaults(func=run_layers)


def run_export(args) -> int:
    from featurebank.export import export_onnx, read_onnx_metadata

    spec = export_onnx(args.model, args.output, weights=args.weights, input_size=args.input_size)
    info = read_onnx_metadata(args.output)
    h, w = spec.preprocessing.input_size
    print(f"wrote {args.output}: {spec.model} ({h}x{w}, weights sha256 "
          f"{spec.weights_sha256[:12]}), {len(info.layers)} layers; "
          f"see 'featurebank layers {args.output}'")
    return 0


def run_models(args) -> int:
    from featurebank.export import list_models

    rows = []
    for entry in list_models():
        available = entry.availability()
        h, w = entry.preprocessing.input_size
        rows.append([entry.name, entry.source, f"{h}x{w}",
                     _param_count(entry.name) if available == "yes" else "-", available])
    _table(["name", "source", "input", "params", "available"], rows)
    return 0


def _param_count(name: str) -> str:
    if ":" in name:  # a pattern entry (torchvision:NAME) has no single size
        return "-"
    import torch

    from featurebank.export._efficientnet_lite import EfficientNetLite

    with torch.device("meta"):  # shapes only: no memory, no weights read
        module = EfficientNetLite(name)
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f}M"


def run_layers(args) -> int:
    from featurebank.export import ensure_exported, read_onnx_metadata
    from featurebank.export._registry import is_onnx_path

    path = args.model
    if not is_onnx_path(path):
        print(f"using the cached export of {path} (made now if absent)", file=sys.stderr)
        path = ensure_exported(path)
    info = read_onnx_metadata(path)
    if args.json:
        print(json.dumps([la.to_dict() for la in info.layers], indent=1))
        return 0
    if info.spec is None:
        print(f"{path}: not made by featurebank; candidate tensors from shape inference "
              f"(state its preprocessing when embedding)")
    rows = [[la.name, la.tensor, "x".join(str(d) for d in la.shape) or "?",
             "-" if la.flops_share is None else f"{100 * la.flops_share:.1f}"]
            for la in info.layers]
    _table(["name", "tensor", "shape (CxHxW)", "FLOPs %"], rows)
    return 0


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(wd) for c, wd in zip(row, widths, strict=True)).rstrip())
