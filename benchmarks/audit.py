"""Knowing the data: planted near-duplicates, flipped labels, and neighbour search at 1M rows.

Fashion-MNIST through the real flow (image files embedded into stores with EfficientNet-Lite0):
1. near-duplicates: edited copies of training images (JPEG quality 70, rescaled by 0.9, cropped
   by 5 %, brightness +-10 %) planted among test images; recall and precision of the leaks at
   the default options (features and pixel check), with the features alone, and by similarity
   alone, counting only pairs with a planted member. The thresholds themselves are chosen on a
   calibration split made with another seed from other images (``calibration``);
2. label errors: 5 % of a 10k training subset's labels flipped; precision and recall of the
   flags (confident learning on out-of-fold probabilities), cleanlab side by side if installed;
3. scale: 1M vectors tiled from the real vectors of a 192-d cut (blocks.13) with noise: recall@10
   and queries/s of the faiss index against exact search, and an audit (near-duplicates and
   outliers through the index, labels on a sample) timed with its peak memory at each size.

    python -m benchmarks.audit --train 10000 --test 2000 --planted 500 --sizes 100000 300000 1000000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import numpy as np

from benchmarks._audit_labels import (
    LABEL_LAYER,
    calibrate_probe,
    image_name,
    ranked_flags,
    side_by_side,
)
from benchmarks._audit_scale import SCALE_LAYER, audit_one, scale, search_quality
from benchmarks._common import REPO, write_result

EDITS = ("jpeg70", "rescale0.9", "crop5", "brightness10")
# near-duplicates at a middle cut (edits move it less than the head: docs/audit.md), labels at
# the head (the best probe); the 1M-row runs at SCALE_LAYER (192 values: its index fits)
DUP_LAYER = "blocks.13"


def edit(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """One planted edit of a 28x28 grey image: (file bytes, extension)."""
    from PIL import Image

    im = Image.fromarray(img)
    out = io.BytesIO()
    if kind == "jpeg70":
        im.save(out, "JPEG", quality=70)
        return out.getvalue(), ".jpg"
    if kind == "rescale0.9":
        im = im.resize((25, 25), Image.BICUBIC)
    elif kind == "crop5":  # 5 % of the area: 27 x 27 of 28 x 28, at a random corner
        x, y = rng.integers(0, 2, 2)
        im = im.crop((x, y, x + 27, y + 27))
    else:
        factor = 1.1 if rng.random() < 0.5 else 0.9
        im = Image.fromarray(np.clip(img.astype(np.float32) * factor, 0, 255).astype(np.uint8))
    im.save(out, "PNG")
    return out.getvalue(), ".png"


def write_split(root: Path, images, labels, names, classes) -> list[Path]:
    from PIL import Image

    paths = []
    for img, lab, name in zip(images, labels, names, strict=True):
        p = root / classes[lab] / f"{name}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists():
            Image.fromarray(img).save(p)
        paths.append(p)
    return paths


def plant(root: Path, images, labels, originals: list[Path], n: int, seed: int, classes) -> dict:
    """``n`` edited copies of random training images into ``root``: copy path -> (original
    path, edit)."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(images), n, replace=False)
    planted = {}
    for j, i in enumerate(chosen):
        kind = EDITS[j % len(EDITS)]
        data, ext = edit(images[i], kind, rng)
        p = root / classes[labels[i]] / f"planted-{j:05d}-{kind}{ext}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        planted[str(p)] = (str(originals[i]), kind)
    return planted


def make_split(work: Path, name: str, n_train: int, n_test: int, n_planted: int, seed: int,
               flip: float, exclude_train=(), exclude_test=()) -> dict:
    """Train/test image folders (labels flipped in the training folders at rate ``flip``),
    planted copies in the test folder, both embedded; what was planted and flipped."""
    from featurebank import embed_collection
    from featurebank.datasets import FASHION_CLASSES, load_fashion_mnist

    Xtr, ytr = load_fashion_mnist("train")
    Xte, yte = load_fashion_mnist("test")
    rng = np.random.default_rng(seed)
    itr = rng.choice(np.setdiff1d(np.arange(len(ytr)), exclude_train), n_train, replace=False)
    ite = rng.choice(np.setdiff1d(np.arange(len(yte)), exclude_test), n_test, replace=False)
    given = ytr[itr].copy()
    flipped = rng.choice(n_train, int(round(flip * n_train)), replace=False)
    given[flipped] = (given[flipped] + rng.integers(1, 10, len(flipped))) % 10
    root = work / name
    train_paths = write_split(root / "train", Xtr[itr], given, [f"tr{i}" for i in itr], FASHION_CLASSES)
    write_split(root / "test", Xte[ite], yte[ite], [f"te{i}" for i in ite], FASHION_CLASSES)
    planted = plant(root / "test", Xtr[itr], ytr[itr], train_paths, n_planted, seed + 100, FASHION_CLASSES)
    t0 = time.perf_counter()
    for split in ("train", "test"):
        embed_collection([str(root / split)], root / f"{split}.h5", "efficientnet_lite0",
                         layers=sorted({SCALE_LAYER, DUP_LAYER, LABEL_LAYER}), progress=True)
    return {"root": root, "train_idx": itr, "test_idx": ite, "planted": planted,
            "flipped": {str(train_paths[i]) for i in flipped}, "embed_s": time.perf_counter() - t0}


def leak_scores(report, planted: dict) -> dict:
    """Recall and precision of the leaks, counting only pairs with a planted member."""
    planted = {image_name(p): (image_name(o), k) for p, (o, k) in planted.items()}
    leaks = [(image_name(r["test"]["path"]), image_name(r["train"]["path"])) for r in report.leaks]
    pairs = [(t, tr) for t, tr in leaks if t in planted]
    right = sum(planted[t][0] == tr for t, tr in pairs)
    per_edit = {}
    for kind in EDITS:
        ours = [t for t, (_, k) in planted.items() if k == kind]
        found = sum(planted[t][0] == tr for t, tr in pairs if planted[t][1] == kind)
        per_edit[kind] = round(found / max(1, len(ours)), 4)
    return {"planted": len(planted), "reported": len(pairs), "right": right,
            "recall": round(right / max(1, len(planted)), 4),
            "precision": round(right / max(1, len(pairs)), 4), "recall_by_edit": per_edit,
            "unplanted_test_images_flagged": len(leaks) - len(pairs)}


def planted_similarities(split: dict, layer: str = DUP_LAYER, reference: int = 5):
    """For each planted copy: the similarity to its nearest training image, whether that is
    its original, and the ratio of its cosine distance to the distance to its
    ``reference``-th nearest training image; for every other test image, its similarity and
    ratio."""
    from featurebank.extractor import FeatureStore, exact_search

    train, test = FeatureStore(split["root"] / "train.h5"), FeatureStore(split["root"] / "test.h5")
    fp = train.resolve(layer).fingerprint
    feats = test.read(layer)
    top = exact_search(train, fp, feats.X, reference)
    table = train.image_table()
    planted = {image_name(p): image_name(o) for p, (o, _) in split["planted"].items()}
    ratios = (1 - top.similarity[:, 0]) / np.maximum(1 - top.similarity[:, -1], 1e-9)
    sims, right, other, r_copy, r_other = [], [], [], [], []
    for path, key, sim, r in zip(feats.paths, top.keys[:, 0], top.similarity[:, 0], ratios, strict=True):
        if image_name(path) in planted:
            sims.append(sim)
            r_copy.append(r)
            right.append(image_name(table[key][0]) == planted[image_name(path)])
        else:
            other.append(sim)
            r_other.append(r)
    return np.array(sims), np.array(right), np.array(other), np.array(r_copy), np.array(r_other)


def calibrate(split: dict) -> dict:
    """The threshold that keeps 98 % of the calibration split's planted copies whose nearest
    training image is their original (the others are lost at any threshold), rounded down to
    0.005; the ratio that lets 5 % of its ordinary test images (those above that threshold)
    pass the ratio test, rounded down to 0.025; with the recall and precision they give there."""
    sims, right, other, r_copy, r_other = planted_similarities(split)
    threshold = float(np.floor(np.quantile(sims[right], 0.02) / 0.005) * 0.005)
    ratio = float(np.floor(np.quantile(np.where(other >= threshold, r_other, np.inf), 0.05) / 0.025) * 0.025)
    out = {"threshold": threshold, "ratio": round(ratio, 4), "reference": 5, "layer": DUP_LAYER,
           "planted": int(len(sims)), "nearest_is_original": int(right.sum())}
    for name, cut_copy, cut_other in (("similarity only", sims >= threshold, other >= threshold),
                                      ("with ratio test", (sims >= threshold) & (r_copy <= ratio),
                                       (other >= threshold) & (r_other <= ratio))):
        found = cut_copy & right
        out[name] = {"recall": round(float(found.mean()), 4),
                     "precision": round(float(found.sum() / max(1, cut_copy.sum())), 4),
                     "unplanted_test_images_flagged": int(cut_other.sum()),
                     "unplanted_test_images": int(len(other))}
    return out


def pixel_candidates(split: dict, layer: str = DUP_LAYER, k: int = 10):
    """For each test image: its ``k`` nearest training images by the features, their feature
    similarities, their pixel-signature correlations (classical/audit/_pixels.py), and which
    of them is its original (planted copies)."""
    from featurebank.classical.audit._pixels import Signatures
    from featurebank.extractor import FeatureStore, exact_search

    train, test = FeatureStore(split["root"] / "train.h5"), FeatureStore(split["root"] / "test.h5")
    fp = train.resolve(layer).fingerprint
    feats = test.read(layer)
    top = exact_search(train, fp, feats.X, k)
    keys = train.set_keys(fp).astype(str)
    row_of = {key: i for i, key in enumerate(keys)}
    table = train.image_table()
    ours = Signatures("test", lambda i: str(feats.paths[i]), len(feats.paths))
    theirs = Signatures("train", lambda i: table[str(keys[i])][0], len(keys))
    rows = np.array([[row_of[str(key)] for key in row] for row in top.keys])
    t0 = time.perf_counter()
    ours.ensure(np.arange(len(feats.paths)))
    theirs.ensure(np.unique(rows))
    seconds = time.perf_counter() - t0
    pix = ours.similarity(np.repeat(np.arange(len(rows)), k).reshape(rows.shape), theirs, rows)
    planted = {image_name(p): image_name(o) for p, (o, _) in split["planted"].items()}
    names = [image_name(p) for p in feats.paths]
    right = np.array([[planted.get(n) == image_name(table[str(keys[r])][0]) for r in row]
                      for n, row in zip(names, rows, strict=True)])
    is_planted = np.array([n in planted for n in names])
    return top.similarity, pix, right, is_planted, seconds / (ours.computed + theirs.computed)


def calibrate_pixels(split: dict, floor: float) -> dict:
    """The pixel threshold: the 99.5th percentile of the best signature correlation of each
    ordinary test image of the calibration split among its candidates (the 10 nearest
    training images by the features with similarity >= ``floor``), rounded up to 0.001, so
    that at most 0.5 % of ordinary images pass the pixel check; with the correlations of the
    planted copies with their originals, by edit, for comparison."""
    sim, pix, right, is_planted, per_image = pixel_candidates(split)
    cand = np.where(sim >= floor, np.nan_to_num(pix, nan=-1.0), -1.0)
    best_other = cand[~is_planted].max(axis=1)
    threshold = round(float(np.ceil(np.quantile(best_other, 0.995) * 1000) / 1000), 3)
    copies = np.where(right, np.nan_to_num(pix, nan=-1.0), -1.0)[is_planted].max(axis=1)
    copies = copies[copies > -1]  # copies whose original is among their 10 nearest
    return {"threshold": threshold, "floor": floor,
            "ordinary_best_quantiles": {str(q): round(float(np.quantile(best_other, q)), 4)
                                        for q in (0.5, 0.9, 0.99, 0.995)},
            "copy_with_original_quantiles": {str(q): round(float(np.quantile(copies, q)), 4)
                                             for q in (0.01, 0.05, 0.5)},
            "ms_per_signature": round(per_image * 1000, 3)}


def threshold_table(split: dict, layers=(DUP_LAYER, LABEL_LAYER),
                    thresholds=(0.85, 0.9, 0.915, 0.93, 0.95, 0.97),
                    ratios=(1.0, 0.8, 0.7, 0.6, 0.575, 0.5)) -> dict:
    """Recall and precision of the planted copies, and the share of ordinary test images
    flagged, at each threshold and ratio, at each cut: what they trade (docs/audit.md)."""
    table = {}
    for layer in layers:
        sims, right, other, r_copy, r_other = planted_similarities(split, layer)
        table[layer] = [{"threshold": t, "ratio": r,
                         "recall": round(float(((sims >= t) & (r_copy <= r) & right).mean()), 4),
                         "precision": round(float(((sims >= t) & (r_copy <= r) & right).sum()
                                                  / max(1, ((sims >= t) & (r_copy <= r)).sum())), 4),
                         "unplanted_flagged": round(float(((other >= t) & (r_other <= r)).mean()), 4)}
                        for t in thresholds for r in ratios]
    return table


def _groups(report) -> dict:
    sizes = [g["size"] for g in report.near_duplicates]
    return {"groups": len(sizes), "images": sum(sizes), "largest": max(sizes, default=0)}


def duplicates(split: dict, threshold: float) -> dict:
    """The audit at DUP_LAYER with the default options (threshold, ratio test and pixel check),
    with the features alone (``pixel_check`` off: the figures before the pixel check), and by
    the similarity threshold alone (``near_ratio`` 1, no pixel check) for comparison."""
    from featurebank.classical import AuditOptions, audit_stores

    def run(report_dir, **opts):
        return audit_stores(split["root"] / "train.h5", [split["root"] / "test.h5"], DUP_LAYER,
                            options=AuditOptions(near_threshold=threshold, index="exact",
                                                 label_check=False, **opts),
                            report=report_dir)

    t0 = time.perf_counter()
    dups = run(split["root"] / "report-duplicates")
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    features = run(None, pixel_check=False)
    features_seconds = time.perf_counter() - t0
    alone = run(None, near_ratio=1.0, pixel_check=False)
    found_by = {}
    for r in dups.leaks:
        found_by[r["found_by"]] = found_by.get(r["found_by"], 0) + 1
    return {"near_duplicates": {**leak_scores(dups, split["planted"]), "groups": _groups(dups),
                                "leaks_found_by": found_by,
                                "pixel_signatures": dups.pixel_check["signatures"],
                                "pixel_unreadable": dups.pixel_check["unreadable_count"]},
            "features_only": {**leak_scores(features, split["planted"]), "groups": _groups(features)},
            "similarity_only": {**leak_scores(alone, split["planted"]), "groups": _groups(alone)},
            "audit_seconds": {DUP_LAYER: round(seconds, 1),
                              f"{DUP_LAYER} without pixel check": round(features_seconds, 1)},
            "counts": {DUP_LAYER: dups.to_dict()["counts"]}}


def labels(split: dict, threshold: float) -> dict:
    """The audit at LABEL_LAYER with the default options: the flags against the flipped rows."""
    from featurebank.classical import AuditOptions, audit_stores

    t0 = time.perf_counter()
    report = audit_stores(split["root"] / "train.h5", [split["root"] / "test.h5"], LABEL_LAYER,
                          options=AuditOptions(near_threshold=threshold, index="exact"),
                          report=split["root"] / "report-labels")
    seconds = time.perf_counter() - t0
    flipped = {image_name(p) for p in split["flipped"]}
    flagged = {image_name(r["path"]) for r in report.label_issues}
    hits = len(flagged & flipped)
    return {"labels": {"rule": report.options["label_rule"], "probe_c": report.options["probe_c"],
                       "flipped": len(flipped), "flagged": len(flagged), "right": hits,
                       "recall": round(hits / len(flipped), 4),
                       "precision": round(hits / max(1, len(flagged)), 4)},
            "audit_seconds": {LABEL_LAYER: round(seconds, 1)},
            "counts": {LABEL_LAYER: report.to_dict()["counts"]}}


def _merge(out: str, found: dict, extra: dict) -> None:
    """Update a finished run's JSON with the parts measured again."""
    from benchmarks._common import RESULTS

    kept = json.loads((RESULTS / f"{out}.json").read_text())
    for key in ("audit_seconds", "counts"):
        kept[key].update(found.pop(key, {}))
    kept.update({**extra, **found})
    write_result(out, {k: v for k, v in kept.items() if k != "machine"})


def main(argv=None) -> None:
    # faiss's OpenMP threads spin-wait: on 2 cores shared with other work one thread is faster
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(REPO / "runs" / "audit"))
    ap.add_argument("--train", type=int, default=10_000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--planted", type=int, default=500)
    ap.add_argument("--flip", type=float, default=0.05)
    ap.add_argument("--calibration", type=int, nargs=3, default=[3000, 1000, 300],
                    metavar=("TRAIN", "TEST", "PLANTED"), help="sizes of the calibration split")
    ap.add_argument("--sizes", type=int, nargs="*", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--noise", type=float, default=0.5)
    ap.add_argument("--label-sample", type=int, default=10_000)
    ap.add_argument("--index", default="ivfpq")
    ap.add_argument("--audit-one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--threshold", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--calibrate-only", action="store_true",
                    help="make and measure the calibration split only (to set the default)")
    ap.add_argument("--scale-only", action="store_true",
                    help="run the 1M-row part again on a finished run's stores (audit.json kept)")
    ap.add_argument("--nprobe-sweep", action="store_true",
                    help="recall@10 and queries/s at several nprobe on the largest tiled store")
    ap.add_argument("--ranked-only", action="store_true",
                    help="precision and recall along the ranked label flags of a finished run")
    ap.add_argument("--duplicates-only", action="store_true",
                    help="calibration and near-duplicates again (labels and scale kept from the JSON)")
    ap.add_argument("--labels-only", action="store_true",
                    help="probe calibration and label checks again (the rest kept from the JSON)")
    ap.add_argument("--out", default="audit")
    args = ap.parse_args(argv)
    if args.audit_one:
        print(json.dumps(audit_one(args.audit_one, args.threshold, args.label_sample, args.index)))
        return
    from featurebank.classical.audit import DEFAULT_NEAR_RATIO, DEFAULT_NEAR_THRESHOLD
    from featurebank.classical.audit._options import (
        DEFAULT_PIXEL_FLOOR,
        DEFAULT_PIXEL_THRESHOLD,
        PROBE_C,
    )

    work = Path(args.work).resolve()
    if args.ranked_only:
        write_result(args.out + "_labels_ranked", ranked_flags(work))
        return
    if args.nprobe_sweep:
        from featurebank.extractor import FeatureStore

        n = max(args.sizes)
        queries = FeatureStore(work / "benchmark" / "test.h5").read(SCALE_LAYER).X[:200]
        store = work / f"tiled-{n}.h5"
        write_result(args.out + "_nprobe", {"rows": n, "index": args.index, "by_nprobe": {
            str(p): search_quality(store, queries, args.index, p) for p in (8, 16, 32, 64)},
            "by_refine_at_nprobe_16": {str(r): search_quality(store, queries, args.index, 16, r)
                                       for r in (8, 16, 32, 64)}})
        return
    if args.scale_only:
        from benchmarks._common import RESULTS

        result = json.loads((RESULTS / f"{args.out}.json").read_text())
        result["scale"] = {"noise": args.noise, "index": args.index, "label_sample": args.label_sample,
                           "sizes_asked": args.sizes, "runs": []}

        def save_scale(runs):
            result["scale"]["runs"] = runs
            write_result(args.out, {**result, "machine": None})

        scale(work, {"root": work / "benchmark"}, args.sizes, args.noise, DEFAULT_NEAR_THRESHOLD,
              args.label_sample, args.index, save_scale)
        return
    started = time.perf_counter()
    # calibration: other training and test images, another seed, no flipped labels
    cal = make_split(work, "calibration", *args.calibration, seed=1, flip=0.0)
    calibration = calibrate(cal)
    print("calibration", calibration, flush=True)
    if args.calibrate_only:
        write_result(args.out + "_calibration", {"dataset": "fashion-mnist (calibration split, seed 1)",
                                                 "calibration": calibration,
                                                 "by_threshold": threshold_table(cal)})
        return
    if args.duplicates_only or args.labels_only:  # the other part's calibration is kept
        from benchmarks._common import RESULTS

        cal_json = json.loads((RESULTS / f"{args.out}_calibration.json").read_text())
        if args.duplicates_only:
            cal_json.update(calibration=calibration, by_threshold=threshold_table(cal),
                            pixels=calibrate_pixels(cal, DEFAULT_PIXEL_FLOOR))
            print("pixel calibration", cal_json["pixels"], flush=True)
        else:
            cal_json["labels"] = calibrate_probe(cal)
            print(cal_json["labels"], flush=True)
        write_result(args.out + "_calibration", {k: v for k, v in cal_json.items() if k != "machine"})
    bench = make_split(work, "benchmark", args.train, args.test, args.planted, seed=0,
                       flip=args.flip, exclude_train=cal["train_idx"], exclude_test=cal["test_idx"])
    result = {"dataset": "fashion-mnist", "model": "efficientnet_lite0 (224 px)",
              "duplicate_layer": DUP_LAYER, "label_layer": LABEL_LAYER, "scale_layer": SCALE_LAYER,
              "faiss_threads": os.environ.get("OMP_NUM_THREADS"),
              "train_images": args.train, "test_images": args.test, "planted": args.planted,
              "edits": list(EDITS), "flip_rate": args.flip,
              "default_threshold": DEFAULT_NEAR_THRESHOLD, "calibration": calibration,
              "embed_seconds": round(cal["embed_s"] + bench["embed_s"], 1)}
    if args.duplicates_only:
        from benchmarks._common import RESULTS

        # the committed figures of the features alone, kept once (rerunning keeps the first)
        kept = json.loads((RESULTS / f"{args.out}.json").read_text())
        before = kept.get("before_pixel_check") or {
            k: kept[k] for k in ("near_duplicates", "similarity_only", "calibration") if k in kept}
        _merge(args.out, duplicates(bench, DEFAULT_NEAR_THRESHOLD),
               {**result, "default_ratio": DEFAULT_NEAR_RATIO,
                "default_pixel_threshold": DEFAULT_PIXEL_THRESHOLD,
                "default_pixel_floor": DEFAULT_PIXEL_FLOOR, "before_pixel_check": before})
        return
    if args.labels_only:
        found = labels(bench, DEFAULT_NEAR_THRESHOLD)
        print(found["labels"], flush=True)
        found["cleanlab"] = side_by_side(bench, PROBE_C)
        print(found["cleanlab"], flush=True)
        _merge(args.out, found, {})
        return
    result.update(duplicates(bench, DEFAULT_NEAR_THRESHOLD))
    found = labels(bench, DEFAULT_NEAR_THRESHOLD)
    result["audit_seconds"].update(found.pop("audit_seconds"))
    result["counts"].update(found.pop("counts"))
    result.update(found)
    print({k: result[k] for k in ("near_duplicates", "labels")}, flush=True)
    result["cleanlab"] = side_by_side(bench, PROBE_C)
    print(result["cleanlab"], flush=True)
    result["scale"] = {"noise": args.noise, "index": args.index, "label_sample": args.label_sample,
                       "sizes_asked": args.sizes, "runs": []}
    write_result(args.out, result)

    def save(runs):
        result["scale"]["runs"] = runs
        result["seconds"] = round(time.perf_counter() - started)
        write_result(args.out, result)

    scale(work, bench, args.sizes, args.noise, DEFAULT_NEAR_THRESHOLD, args.label_sample,
          args.index, save)


if __name__ == "__main__":
    main()
