"""``featurebank store info|export``."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("store", help="inspect or export a feature store")
    ssub = p.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    info = ssub.add_parser("info", help="feature sets, rows and failures")
    info.add_argument("store")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=run_info)
    exp = ssub.add_parser("export", help="write one feature set to .npz")
    exp.add_argument("store")
    exp.add_argument("-o", "--output", required=True)
    exp.add_argument("--layer", default=None, help="layer name or fingerprint")
    exp.set_defaults(func=run_export)


def run_info(args) -> int:
    from featurebank.extractor.store._store import FeatureStore

    info = FeatureStore(args.store).info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"store {info['path']}: {info['images']} images, {info['paths']} paths")
    print(f"{'fingerprint':<18}{'rows':>8}{'dim':>7}  {'dtype':<9}spec")
    for fs in info["feature_sets"]:
        print(f"{fs['fingerprint']:<18}{fs['rows']:>8}{fs['dim']:>7}  {fs['dtype']:<9}{fs['spec']}")
    failures = info["failures"]
    print(f"failures: {len(failures)}")
    for path, reason in failures[:10]:
        print(f"  {path}: {reason}")
    if len(failures) > 10:
        print(f"  ... and {len(failures) - 10} more (--json lists all)")
    return 0


def run_export(args) -> int:
    from featurebank.extractor.store._store import FeatureStore

    out = FeatureStore(args.store).export_npz(args.output, args.layer)
    print(f"wrote {out}")
    return 0
