"""``featurebank store info|export|upgrade``."""

from __future__ import annotations

import json

from featurebank.cli.flags import register_flags

#: store's actions: name -> (help, description)
ACTIONS = {
    "info": ("labels, feature sets, rows and failures", None),
    "export": ("write one feature set to .parquet, .npz or .npy",
               "The format follows the output's extension: .parquet (key, path, label, vector; "
               "the spec in the file's metadata), .npz (features, keys, paths, labels, spec) or "
               ".npy (the vectors alone). Rows are streamed in chunks: memory stays bounded."),
    "upgrade": ("rewrite an older store at the current format (3)",
                "Format 1 stored image paths relative to the folder 'featurebank embed' ran "
                "in; format 2 stores them absolute (give that folder as --root). Format 3 also "
                "allows URLs, tar members and parquet rows; a format-2 store only has its "
                "version raised."),
}


def register(sub) -> None:
    p = sub.add_parser("store", help="inspect, export or upgrade a feature store")
    ssub = p.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    info, exp, up = (ssub.add_parser(name, help=text, description=about)
                     for name, (text, about) in ACTIONS.items())
    for parser, run in ((info, run_info), (exp, run_export), (up, run_upgrade)):
        parser.add_argument("store")
        parser.set_defaults(func=run)
    info.add_argument("--json", action="store_true")
    exp.add_argument("-o", "--output", required=True, metavar="FILE.parquet|npz|npy")
    exp.add_argument("--layer", default=None, help="layer name or fingerprint")
    register_flags(exp, "FeatureStore", {"layer_or_fingerprint": "--layer"})
    up.add_argument("--root", default=None, metavar="DIR",
                    help="format 1 only: the folder 'featurebank embed' ran in when the store "
                         "was written")
    up.add_argument("--force", action="store_true",
                    help="upgrade even if no image is found under --root")
    register_flags(up, "upgrade_store", {"root": "--root", "force": "--force"})


def run_info(args) -> int:
    from featurebank.extractor import label_table, upgrade_message
    from featurebank.extractor.store import FORMAT_VERSION, FeatureStore

    info = FeatureStore(args.store).info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"store {info['path']} (format {info['format_version']}): {info['images']} images, "
          f"{info['paths']} paths")
    for root in info["roots"]:
        print(f"collection: {root}")
    if info["format_version"] < FORMAT_VERSION:
        print(f"note: {upgrade_message(info['path'], info['format_version'])}")
    if info["labels"]:
        print(label_table(info["labels"], "images per label"))
    print(f"{'fingerprint':<18}{'rows':>8}{'dim':>7}  {'dtype':<9}spec")
    for fs in info["feature_sets"]:
        shape = "" if len(fs["row_shape"]) == 1 else f" rows {'x'.join(map(str, fs['row_shape']))}"
        print(f"{fs['fingerprint']:<18}{fs['rows']:>8}{fs['dim']:>7}  {fs['dtype']:<9}"
              f"{fs['spec']}{shape}")
    failures = info["failures"]
    print(f"failures: {len(failures)}")
    for path, reason in failures[:10]:
        print(f"  {path}: {reason}")
    if len(failures) > 10:
        print(f"  ... and {len(failures) - 10} more (--json lists all)")
    return 0


def run_export(args) -> int:
    from featurebank.extractor.store import FeatureStore

    out = FeatureStore(args.store).export(args.output, args.layer)
    print(f"wrote {out}")
    return 0


def run_upgrade(args) -> int:
    from featurebank.extractor.store import upgrade_store

    done = upgrade_store(args.store, args.root, force=args.force)
    if done["from_version"] == done["to_version"]:
        print(f"store {args.store} is already format {done['to_version']}; nothing to do")
        return 0
    if done["from_version"] == 2:
        print(f"upgraded {args.store} from format 2 to {done['to_version']} (paths unchanged)")
        return 0
    print(f"upgraded {args.store} from format {done['from_version']} to {done['to_version']}: "
          f"{done['made_absolute']} of {done['paths']} image paths made absolute against "
          f"{args.root}; {done['found']} of them exist")
    return 0
