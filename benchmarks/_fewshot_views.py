"""Views of the 28x28 Fashion-MNIST garments for the 10-shot benchmark, and their cached features.

A *view* is one way of showing the model a garment: ``plain`` (white on black, as stored), or
inverted (a dark garment on white, like a product photo) in a white frame of ``pad`` pixels,
shifted by ``(dx, dy)`` pixels inside it (a crop of a larger frame) and/or mirrored. A *view
set* is what a protocol averages over: every view of a training image is a training row (or
their mean is, in ``mean`` mode); a test image's features are the mean over its views.

Features of every cut in :data:`LAYERS` (average-pooled) are embedded once per (view, split,
image) and cached in ``WORKDIR/fewshot_cache`` (only missing images are embedded); the
pseudo-cut ``pixels`` is the view's own pixels / 255.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

MODEL = "efficientnet_lite0"
LAYERS = ["blocks.7", "blocks.10", "blocks.12", "blocks.13", "blocks.14", "blocks.15", "head"]

#: name -> (rendering, frame pad, shift dx, shift dy, mirrored); ``@N``: at input size N
VIEWS = {"plain": ("plain", 0, 0, 0, False),
         "inv-pad4": ("inv", 4, 0, 0, False), "inv-pad4-flip": ("inv", 4, 0, 0, True),
         "inv-pad4-left": ("inv", 4, -2, 0, False), "inv-pad4-right": ("inv", 4, 2, 0, False),
         "inv-pad4-up": ("inv", 4, 0, -2, False), "inv-pad4-down": ("inv", 4, 0, 2, False),
         "inv-pad2": ("inv", 2, 0, 0, False), "inv-pad7": ("inv", 7, 0, 0, False)}
SIZES = (160, 288)  # besides the model's own 224
VIEWS.update({f"{v}@{n}": VIEWS[v] for v in ("inv-pad4", "inv-pad4-flip") for n in SIZES})
SHIFTS = ["inv-pad4-left", "inv-pad4-right", "inv-pad4-up", "inv-pad4-down"]
#: name -> the views a protocol averages over
VIEW_SETS = {"plain": ["plain"],
             "inv-pad4": ["inv-pad4"],
             "inv-pad4 flip": ["inv-pad4", "inv-pad4-flip"],
             "inv-pad4 crops": ["inv-pad4", *SHIFTS],
             "inv-pad4 crops+flip": ["inv-pad4", *SHIFTS, "inv-pad4-flip"],
             "inv scales+flip": ["inv-pad2", "inv-pad4", "inv-pad7", "inv-pad4-flip"],
             "inv all": [v for v in VIEWS if v != "plain" and "@" not in v],
             **{f"inv-pad4 flip @{n}px": [f"inv-pad4@{n}", f"inv-pad4-flip@{n}"] for n in SIZES}}


def render(images: np.ndarray, view: str) -> np.ndarray:
    """The uint8 images ``[N, 28, 28]`` as the view shows them."""
    rendering, pad, dx, dy, mirrored = VIEWS[view]
    if rendering == "inv":
        if max(abs(dx), abs(dy)) > pad:
            raise ValueError(f"view {view}: a shift beyond the frame would crop the garment")
        images = np.pad(255 - images, ((0, 0), (pad + dy, pad - dy), (pad + dx, pad - dx)),
                        constant_values=255)
    elif rendering != "plain" or pad or dx or dy:
        raise ValueError(f"unknown view {view!r}")
    return np.ascontiguousarray(images[:, :, ::-1] if mirrored else images)


class FeatureBank:
    """Features of (split, view) for selected image indices, embedded once and cached."""

    def __init__(self, workdir: Path, images: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.workdir = workdir
        self.images = images
        self._extractors: dict = {}
        self._memory: dict = {}

    def _path(self, split: str, view: str) -> Path:
        return self.workdir / "fewshot_cache" / f"{MODEL}_{view}_{split}.npz"

    def _load(self, split: str, view: str) -> dict:
        if (split, view) not in self._memory:
            path = self._path(split, view)
            have: dict = {}
            if path.exists():
                z = np.load(path)
                have = {"index": z["index"], **{la: z[la.replace(".", "_")] for la in LAYERS}}
            self._memory[split, view] = have
        return self._memory[split, view]

    def ensure(self, split: str, index: np.ndarray, view: str) -> None:
        """Embed (and cache) the images of ``index`` not yet cached for this view."""
        have = self._load(split, view)
        missing = np.setdiff1d(index, have.get("index", []))
        if not len(missing):
            return
        new = self._embed(self.images[split][0][missing], f"{split} {view}", view)
        index_all = np.concatenate([have.get("index", np.zeros(0, int)), missing])
        order = np.argsort(index_all)
        out = {"index": index_all[order]}
        for layer in LAYERS:
            out[layer] = (np.concatenate([have[layer], new[layer]]) if have else new[layer])[order]
        path = self._path(split, view)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, index=out["index"], **{la.replace(".", "_"): out[la] for la in LAYERS})
        tmp.replace(path)  # a killed run keeps the previous cache whole
        self._memory[split, view] = out

    def get(self, split: str, index: np.ndarray, view: str) -> dict[str, np.ndarray]:
        self.ensure(split, index, view)
        have = self._load(split, view)
        pos = np.searchsorted(have["index"], index)
        pixels = render(self.images[split][0][index], view).reshape(len(index), -1) / 255.0
        return {"pixels": pixels.astype(np.float32), **{la: have[la][pos] for la in LAYERS}}

    def _embed(self, images: np.ndarray, what: str, view: str) -> dict[str, np.ndarray]:
        from featurebank.extractor import Extractor

        size = int(view.split("@")[1]) if "@" in view else None
        if size not in self._extractors:
            self._extractors[size] = Extractor(MODEL, layers=LAYERS, batch_size=64, input_size=size)
        pixels = render(images, view)
        chunks = []
        with tqdm(total=len(pixels), desc=f"embed {what}", unit="img") as bar:
            for i in range(0, len(pixels), 256):
                chunks.append(self._extractors[size].embed(list(pixels[i:i + 256])))
                bar.update(len(chunks[-1][LAYERS[0]]))
        return {layer: np.concatenate([c[layer] for c in chunks]) for layer in LAYERS}
