"""What both engines share: the run's options (:class:`EmbedRun`, defined in the light
``extractor/_options.py``), the per-file step and the summary type."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import asdict, dataclass, field

import numpy as np

from featurebank.extractor._labels import label_table
from featurebank.extractor._options import ENGINES, EmbedRun
from featurebank.extractor._preprocess import DecodeError, decode, image_key, read_bytes
from featurebank.spec import Preprocessing

log = logging.getLogger(__name__)
__all__ = ["ENGINES", "EmbedRun", "EmbedSummary", "Prepared", "label_table", "prepare_file"]


@dataclass
class EmbedSummary:
    """What a run did: counts per outcome, wall time, and the images per label of the input.

    ``str(summary)`` names the files that failed (the first :attr:`SHOWN_FAILURES`, with why)
    and ends with the table of labels (classes) and counts, and with any warning about the
    layout (labels that look like dataset splits), so a wrong folder shows at once.
    """

    SHOWN_FAILURES = 10  # a run over a broken folder must not print thousands of lines

    total: int = 0
    embedded: int = 0
    cached: int = 0
    duplicates: int = 0
    failed: int = 0
    seconds: float = 0.0
    labels: dict[str, int] = field(default_factory=dict)  # images stored per label (not failed)
    nodes: dict[str, int] = field(default_factory=dict)  # Ray engine: images embedded per node id
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of this run
    warnings: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.total / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "images_per_s": round(self.images_per_s, 2)}

    def __str__(self) -> str:
        lines = [f"{self.total} images in {self.seconds:.1f} s ({self.images_per_s:.1f} img/s): "
                 f"embedded {self.embedded}, already cached {self.cached}, duplicates "
                 f"{self.duplicates}, failed {self.failed}"]
        if self.failures:
            lines.append("failed files (skipped, recorded in the store):")
            lines += [f"  {path}: {reason}" for path, reason in self.failures[:self.SHOWN_FAILURES]]
            if len(self.failures) > self.SHOWN_FAILURES:
                lines.append(f"  ... and {len(self.failures) - self.SHOWN_FAILURES} more "
                             "('featurebank store info STORE' lists every one)")
        if len(self.nodes) > 1:
            lines.append(f"embedded on {len(self.nodes)} Ray nodes: " + ", ".join(
                f"{node[:8]} {n}" for node, n in sorted(self.nodes.items())))
        if self.labels:
            lines.append(label_table(self.labels, "images stored per label"))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


@dataclass
class Prepared:
    """One file after the per-file step: its content key and pixels, or why it failed.

    ``pixels`` is None for content already stored (cached: not decoded) and for failures."""

    key: str | None = None
    pixels: np.ndarray | None = None
    error: str | None = None


def prepare_file(path: str, preprocessing: Preprocessing, max_pixels: int,
                 done: Collection[str], data: bytes | DecodeError | None = None) -> Prepared:
    """Read, key (SHA-256 of the bytes) and decode one file, as both engines do.

    ``path`` is any stored path form (:func:`featurebank.extractor.sources.open_source` reads
    it); ``data`` is its bytes when already read (container members, streamed by
    :func:`featurebank.extractor.sources.iter_payloads`), or the error reading them gave.
    Content in ``done`` is not decoded; a file that cannot be read or decoded becomes a failure
    with its reason, never an exception: one odd file must not abort a run of millions."""
    try:
        if isinstance(data, DecodeError):
            raise data
        if data is None:
            data = read_bytes(path)
        key = image_key(data)
        if key in done:
            return Prepared(key)
        return Prepared(key, decode(data, preprocessing, max_pixels, path))
    except DecodeError as exc:
        return Prepared(error=exc.reason)
    except Exception as exc:
        log.exception("unexpected error decoding %s", path)
        return Prepared(error=f"unexpected error ({type(exc).__name__}: {exc})")
