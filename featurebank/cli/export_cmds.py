"""``featurebank export``, ``models`` and ``layers``: the model side of the flow."""

from __future__ import annotations

import json
import sys
from typing import Any

from featurebank.cli.flags import add_option_flags
from featurebank.spec import DEFAULT_MODEL


def register(sub) -> None:
    p = sub.add_parser("export", help="export a registry model to a self-describing ONNX file",
                       description="Write MODEL as ONNX with its spec and layer catalogue inside. "
                       "The file alone is enough to embed images (no torch needed).")
    p.add_argument("model", metavar="MODEL", help=f"registry name, e.g. {DEFAULT_MODEL}")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p.add_argument("--weights", metavar="STATE_DICT",
                   help="state dict of the same architecture (e.g. fine-tuned); default: ImageNet")
    p.add_argument("--input-size", type=int, metavar="N",
                   help="square input side (default: the model's pretrained size)")
    add_option_flags(p, _preprocessing(), only=EXPORT_TRANSFORM, flags=_CONVENTION_FLAGS,
                     overrides={k: {**_CONVENTION_HELP[k], "help": _EXPORT_HELP[k]}
                                for k in EXPORT_TRANSFORM}, unstated=True)
    p.set_defaults(func=run_export)

    p = sub.add_parser("models", help="list the models that can be exported")
    p.set_defaults(func=run_models)

    p = sub.add_parser("layers", help="list the layers a model can be cut at",
                       description="MODEL is a registry name (exported into the cache on first "
                       "use) or an .onnx file; foreign ONNX files list candidate tensors.")
    p.add_argument("model", metavar="MODEL|FILE.onnx")
    p.add_argument("--preprocessing", metavar="FILE",
                   help="conventions of a foreign ONNX file (JSON/TOML, as for 'adopt'): exact "
                        "shapes and layouts for its input size")
    p.add_argument("--json", action="store_true", help="print the layers as JSON")
    p.add_argument("--all", action="store_true",
                   help="also list every raw tensor a foreign model can be cut at (default: its "
                        "friendly cuts stage.K, head, pool, logits)")
    p.set_defaults(func=run_layers)

    p = sub.add_parser(
        "adopt", help="make any ONNX image CNN a self-describing featurebank model",
        description="Check the conventions of FILE.onnx against its graph and write a copy "
        "that carries them (spec named by the file's SHA-256, preprocessing, layer catalogue "
        "with layouts). Required: --pixel-range and --channel-order; --layout and --input-size "
        "only where the graph input is dynamic. Nothing is written when a check fails.")
    p.add_argument("source", metavar="FILE.onnx")
    p.add_argument("-o", "--output", required=True, metavar="ADOPTED.onnx")
    add_convention_arguments(p)
    p.set_defaults(func=run_adopt)


#: Preprocessing fields whose flags are not spelt --field-name (README's --resize first)
_CONVENTION_FLAGS = {"resize_size": ("--resize", "--resize-size"),
                     "tensor_layouts": ("--tensor-layout",)}
#: what adopt says instead of a default: where an unstated value comes from
_CONVENTION_HELP: dict[str, dict[str, Any]] = {
    "input_size": {"metavar": "N|H,W", "type": str,
                   "help": "network input, a square side or H,W (unstated: the graph's)"},
    "resize_size": {"metavar": "N", "help": "shorter side before the centre crop"},
    "interpolation": {"help": "resize filter"},
    "mean": {"help": "per channel, in the model's channel order and pixel range"},
    "std": {"help": "per channel, in the model's channel order and pixel range"},
    "pixel_range": {"help": "the range mean/std apply to: 1 (0-1 floats) or 255 (0-255); "
                    "required"},
    "channel_order": {"help": "the model's channel order; required"},
    "background": {"help": "RGB colour transparent pixels are composited on, 0-255 "
                   "(unstated: white)"},
    "layout": {"help": "of the graph input (unstated: its shape's)"},
    "resize_rule": {"help": "how the resized size and the crop offset are rounded "
                    "(unstated: featurebank's own rule)"},
    "tensor_layouts": {"action": "append", "metavar": "TENSOR=nchw|nhwc", "type": str,
                       "help": "layout of an activation the graph cannot show; repeatable"},
    "prefix_tokens": {"help": "a vision transformer's tokens before its patch tokens (class "
                      "and register tokens; unstated: what the graph shows)"},
    "class_token": {"help": "whether the first prefix token is a class token"},
}


def _convention_help() -> dict[str, dict[str, Any]]:
    """:data:`_CONVENTION_HELP`, each value adopt takes when unstated named from
    :data:`featurebank.spec.ADOPT_UNSTATED` (the values adopt uses)."""
    from featurebank.spec import ADOPT_UNSTATED

    out = {name: dict(keywords) for name, keywords in _CONVENTION_HELP.items()}
    for name, (_, words) in ADOPT_UNSTATED.items():
        out[name]["help"] += f" (unstated: {words})"
    return out


#: The eval transform fields ``export`` can state, with ``adopt``'s flags and meaning (for
#: weights trained with another transform than their architecture's published weights).
EXPORT_TRANSFORM = ("resize_size", "interpolation", "mean", "std")
_EXPORT_HELP = {
    "resize_size": "shorter side before the centre crop (unstated: the weights' own transform)",
    "interpolation": "resize filter (unstated: the weights' own transform)",
    "mean": "per channel, RGB, 0-1 range (unstated: the weights' own transform)",
    "std": "per channel, RGB, 0-1 range (unstated: the weights' own transform)",
}


def _preprocessing() -> type:
    from featurebank.spec import Preprocessing

    return Preprocessing


def add_convention_arguments(p) -> None:
    """The flags of a foreign model's conventions, one per :class:`Preprocessing` field (the
    field names are also those of a preprocessing file). Unstated flags are None: the value
    comes from the file or the graph, and a stated flag wins."""
    from featurebank.spec import Preprocessing

    p.add_argument("--preprocessing", metavar="FILE",
                   help="JSON/TOML file with the fields below (underscores); flags win")
    add_option_flags(p, Preprocessing, flags=_CONVENTION_FLAGS, overrides=_convention_help(),
                     unstated=True)
    p.add_argument("--classes", metavar="FILE", help="class names of the logits, one a line")


def convention_flags(args) -> dict:
    """The convention flags that were given, by preprocessing-file field name."""
    from featurebank.cli.flags import FIELDS_KEY
    from featurebank.spec import Preprocessing

    names = [*getattr(args, FIELDS_KEY)[Preprocessing], "classes"]
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def run_adopt(args) -> int:
    from featurebank.export import adopt, read_onnx_metadata

    spec = adopt(args.source, args.output, args.preprocessing, **convention_flags(args))
    info = read_onnx_metadata(args.output)
    pre = spec.preprocessing
    named = [la.name for la in info.layers if la.name != la.tensor]
    print(f"wrote {args.output}: {spec.model} (sha256 {spec.weights_sha256[:12]}), input "
          f"{pre.input_size[0]}x{pre.input_size[1]} {pre.layout} {pre.channel_order} "
          f"0-{pre.pixel_range}, {len(info.layers)} layers ({', '.join(named) or 'tensor names'})"
          f"; see 'featurebank layers {args.output}'")
    return 0


def run_export(args) -> int:
    from featurebank.export import export_onnx, read_onnx_metadata

    transform = {k: getattr(args, k) for k in EXPORT_TRANSFORM if getattr(args, k) is not None}
    spec = export_onnx(args.model, args.output, weights=args.weights, input_size=args.input_size,
                       transform=transform or None)
    info = read_onnx_metadata(args.output)
    pre = spec.preprocessing
    h, w = pre.input_size
    print(f"wrote {args.output}: {spec.model} ({h}x{w}, weights sha256 "
          f"{spec.weights_sha256[:12]}), {len(info.layers)} layers; "
          f"see 'featurebank layers {args.output}'")
    origin = info.transform or {}
    if origin:
        print(f"eval transform: resize {pre.resize_size}, crop {h}x{w}, {pre.interpolation}, "
              f"mean {list(pre.mean)}, std {list(pre.std)}: {origin['kind']}"
              f"{' ' + origin['entry'] if origin['entry'] else ''} ({origin['how']})")
    return 0


def run_models(args) -> int:
    from featurebank.export import list_models

    rows = []
    for entry in list_models():
        available = entry.availability()
        h, w = entry.preprocessing.input_size
        count = entry.parameter_count() if available == "yes" else None
        rows.append([entry.name, entry.source, f"{h}x{w}",
                     "-" if count is None else f"{count / 1e6:.2f}M", available])
    _table(["name", "source", "input", "params", "available"], rows)
    return 0


def run_layers(args) -> int:
    from featurebank.export import ensure_exported, is_onnx_path, read_onnx_metadata

    path = args.model
    if not is_onnx_path(path):
        print(f"using the cached export of {path} (made now if absent)", file=sys.stderr)
        path = ensure_exported(path)
    pre = None
    if args.preprocessing:
        from featurebank.export import resolve_conventions

        pre, _ = resolve_conventions(path, args.preprocessing)
    info = read_onnx_metadata(path, pre, probe=True)  # a raw file: shapes a run shows too
    native = info.spec is not None and info.spec.source != "onnx"
    friendly = [la for la in info.layers if la.name != la.tensor]
    shown = info.layers if args.all or native or not friendly else friendly
    if args.json:
        print(json.dumps([la.to_dict() for la in shown], indent=1))
        return 0
    if info.spec is None:
        print(f"{path}: not made by featurebank; candidate tensors from shape inference "
              f"(adopt it with 'featurebank adopt', or state --preprocessing FILE)")
    rows = [[la.name, la.tensor,
             ("x".join(str(d) for d in la.shape) or "?") + (" *" if la.measured else ""),
             _layout(la, native), "-" if la.flops_share is None else f"{100 * la.flops_share:.1f}"]
            for la in shown]
    _table(["name", "tensor", "shape", "layout", "FLOPs %"], rows)
    if any(la.measured for la in shown):
        print("(* shape measured by running the graph once: static shape inference could not "
              "give it)")
    if len(shown) < len(info.layers):
        print(f"({len(info.layers) - len(shown)} more tensors can be cut at by name: "
              f"'featurebank layers {args.model} --all')")
    return 0


def _layout(la, native: bool) -> str:
    if la.layout:
        return la.layout
    rank = len(la.shape) + 1
    return "NCHW" if native and rank == 4 else "NC" if native and rank == 2 else "?"


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(wd) for c, wd in zip(row, widths, strict=True)).rstrip())
