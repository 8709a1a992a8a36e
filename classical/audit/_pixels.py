"""Pixel signatures that confirm the near-duplicate pairs the features propose.

A signature is the image, decoded by the one decode path (:func:`featurebank.extractor.decode`:
EXIF orientation, alpha on white, shorter side resized to ``DECODE`` px bilinearly, centre
square), made grey, averaged over 4 x 4 blocks to ``SIZE x SIZE``, mean removed and
L2-normalised; two signatures are compared by their dot product, the Pearson correlation of
the two thumbnails. This is the "tiny image" descriptor of Torralba, Fergus and Freeman (2008,
80 million tiny images), used as a copy check: re-encoding (JPEG), rescaling and brightness or
contrast changes hardly move an 8 x 8 average of the image, while two different garments of
one kind differ in it. Measured on the calibration split of ``benchmarks.audit`` (docs/audit.md,
"The pixel check"): 8 x 8 separates copies from look-alikes better than 16 or 32, and going
through 32 px matters: Pillow's box filter straight to 8 px aliases differently at 25 and 28
px, so rescaled copies correlated 0.97-0.99 with their originals instead of >= 0.996.

Signatures are computed once per image, only for the rows that appear in a candidate pair, one
image decoded at a time (a streaming pass over the rows asked for), and kept in one float32
array of ``SIZE**2`` values per row of the store, made on first use (256 bytes a row: 256 MB
per million rows). An image that cannot be read (moved, deleted, corrupt) or that is flat (no
contrast: its correlation is undefined) has no signature; its pairs are judged by the features
alone and the audit lists it."""

from __future__ import annotations

import logging

import numpy as np

from featurebank.errors import FeaturebankError

__all__ = ["DECODE", "SIZE", "Signatures", "signature"]

log = logging.getLogger(__name__)

SIZE = 8
DECODE = 32  # decoded at 32 px, averaged over 4 x 4 blocks (see above: aliasing)
_GREY = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 luma, as Pillow's "L"
_FLAT = 1e-3  # below this L2 norm (grey levels) a thumbnail has no pattern to compare


def _preprocessing():
    from featurebank.spec import Preprocessing

    # the decode path's own rules (shorter side resized, centre square), so a signature sees
    # what the features saw, at low resolution; Pillow's bilinear filter widens when it shrinks
    return Preprocessing(input_size=(DECODE, DECODE), resize_size=DECODE, interpolation="bilinear")


def signature(source, preprocessing=None) -> np.ndarray:
    """The signature of one image (path, bytes or array): ``SIZE**2`` float32 values, mean 0,
    norm 1.

    Raises
    ------
    FeaturebankError
        The image cannot be read or decoded (its reason), or it is flat.
    """
    from featurebank.extractor import decode

    pixels = decode(source, preprocessing or _preprocessing()).astype(np.float32)
    block = DECODE // SIZE
    grey = (pixels @ _GREY).reshape(SIZE, block, SIZE, block).mean(axis=(1, 3)).ravel()
    grey -= grey.mean()
    norm = float(np.linalg.norm(grey))
    if norm < _FLAT:
        raise FeaturebankError("flat image (no contrast to compare)")
    return grey / norm


class Signatures:
    """The signatures of one store's rows, computed on demand and kept.

    Parameters
    ----------
    name : str
        The store, as the audit names it.
    paths : callable
        Row -> its stored image path.
    rows : int
        Rows of the store.
    """

    def __init__(self, name: str, paths, rows: int):
        self.name = name
        self._paths = paths
        self._rows = rows
        self._state = np.zeros(rows, np.int8)  # 0 not computed, 1 signature, 2 none
        self._values: np.ndarray | None = None  # [rows, SIZE**2], made on first use
        self.unreadable: list[dict] = []

    def ensure(self, rows: np.ndarray) -> None:
        """Compute the signatures of ``rows`` not yet seen: one image at a time, in row order."""
        todo = np.unique(rows[rows >= 0])
        todo = todo[self._state[todo] == 0]
        if not len(todo):
            return
        if self._values is None:
            self._values = np.zeros((self._rows, SIZE * SIZE), np.float32)
        log.info("%s: pixel signatures of %d images", self.name, len(todo))
        pre = _preprocessing()
        failed = 0
        for row in todo:
            path = self._paths(int(row))
            try:
                if not path:
                    raise FeaturebankError("no image path stored")
                self._values[row] = signature(path, pre)
                self._state[row] = 1
            except FeaturebankError as exc:
                self._state[row] = 2
                failed += 1
                self.unreadable.append({"store": self.name, "row": int(row), "path": path,
                                        "reason": getattr(exc, "reason", None) or str(exc)})
        if failed:
            log.warning("%s: %d image(s) could not be read for the pixel check (first: %s); "
                        "their pairs are judged by the features alone", self.name, failed,
                        self.unreadable[-failed]["path"])

    @property
    def computed(self) -> int:
        """Rows with a signature."""
        return int((self._state == 1).sum())

    def similarity(self, rows_a: np.ndarray, other: Signatures, rows_b: np.ndarray) -> np.ndarray:
        """Correlation of the signatures of ``rows_a`` here and ``rows_b`` in ``other`` (same
        shape); NaN where either has none (run :meth:`ensure` first)."""
        a, b = np.maximum(rows_a, 0), np.maximum(rows_b, 0)
        have = (rows_a >= 0) & (rows_b >= 0) & (self._state[a] == 1) & (other._state[b] == 1)
        out = np.full(rows_a.shape, np.nan, np.float32)
        if have.any():
            assert self._values is not None and other._values is not None
            out[have] = np.einsum("ij,ij->i", self._values[a[have]], other._values[b[have]])
        return out
