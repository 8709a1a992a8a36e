"""How many images per class ``compare``'s screening slice needs: agreement of LogME on a slice
with LogME on all of TRAIN, on the stores of ``benchmarks.compare``'s backbones and cuts.

    python -m benchmarks.compare_screen [--train 300] [--sizes 3 5 8 12] [--draws 5]

Per data set and slice size, over ``--draws`` random stratified slices: which passes (backbone,
pooling) hold the slice's LogME top ``--top`` sets (the passes screening keeps), and how many
of the full-TRAIN LogME top ``--top`` sets lie in them. Embedding is done once per data set;
the slices are drawn from its rows.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks._common import write_result
from benchmarks.compare import CUTS, _dataset


def run_one(name: str, n_train: int, sizes: list[int], draws: int, top: int, root: Path) -> dict:
    from featurebank.compare._candidates import resolve_backbones
    from featurebank.compare._select import rank_by_logme, shortlist
    from featurebank.compare._stores import embed_passes, load_matrices, only_keys
    from featurebank.datasets import write_image_folder
    from featurebank.export import ensure_exported

    splits, classes = _dataset(name, n_train, 10)
    train = write_image_folder(*splits["train"], root / name / "train", classes)
    models = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
              str(ensure_exported("efficientnet_lite0", input_size=160)))
    passes = embed_passes(str(train), [(b, "avg") for b in resolve_backbones(models, CUTS)],
                          root / name, 32, False)
    mats = load_matrices(passes)
    full = shortlist(rank_by_logme(passes, mats, True), top)
    rows = []
    for k in sizes:
        for draw in range(draws):
            rng = np.random.default_rng(draw)
            keys = [key for label in np.unique(mats.y)
                    for key in mats.keys[rng.permutation(np.flatnonzero(mats.y == label))[:k]]]
            kept = {s.backbone.label for s in
                    shortlist(rank_by_logme(passes, only_keys(mats, frozenset(keys)), True), top)}
            rows.append({"per_class": k, "draw": draw, "kept_passes": sorted(kept),
                         "full_top_in_kept": sum(s.backbone.label in kept for s in full)})
    summary = {str(k): {"mean_full_top_in_kept": float(np.mean(
        [r["full_top_in_kept"] for r in rows if r["per_class"] == k])),
        "mean_kept_passes": float(np.mean([len(r["kept_passes"]) for r in rows
                                           if r["per_class"] == k]))} for k in sizes}
    print(name, summary, flush=True)
    return {"dataset": name, "train_images": len(mats.y),
            "full_top": [s.name for s in full], "summary": summary, "rows": rows}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=300)
    ap.add_argument("--sizes", type=int, nargs="+", default=[3, 5, 8, 12])
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--top", type=int, default=4)
    ap.add_argument("--datasets", nargs="+", default=["fashion-mnist", "digits"])
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="fb-compare-screen-"))
    try:
        results = [run_one(n, args.train, args.sizes, args.draws, args.top, root)
                   for n in args.datasets]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_result("compare_screen", {"cuts": list(CUTS), "top": args.top, "datasets": results})


if __name__ == "__main__":
    main()
