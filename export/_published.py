"""Published weights of timm and torchvision, recognised by their content, so that a weights
file given with ``--weights`` gets the eval transform of the weights it holds.

- torchvision: each weights entry's file name carries the prefix of its SHA-256 that
  ``torch.hub`` checks on download (``mobilenet_v2-b0353104.pth``: ``b0353104``,
  ``torch.hub.HASH_REGEX``). A file whose SHA-256 starts with an entry's prefix is that entry's
  published file, whatever it is called; its transform is the entry's ``transforms()``.
- timm publishes no digest that works offline, so its entries are the ones registered with
  :func:`register_weights`, keyed by the digest of the tensors (``tensors_sha256``) of the tag.

Registered entries (:func:`register_weights`) are searched before the library's own, so a
deployment can name the files it ships and tests can inject an entry. Weights that match no
entry get the default weights' transform, and the export says so (:class:`TransformOrigin`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

#: What ``torch.hub`` reads from a published file's name: the prefix of its SHA-256.
HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")


@dataclass(frozen=True)
class PublishedWeights:
    """One published weights entry of an architecture.

    Attributes
    ----------
    source : {'torchvision', 'timm'}
    arch : str
        The library's architecture name (``mobilenet_v2``, ``resnet50``).
    name : str
        The entry (torchvision's ``IMAGENET1K_V1``, a timm tag such as ``a1_in1k``).
    transform : callable
        Returns the entry's eval transform as :class:`featurebank.spec.Preprocessing` fields
        (``input_size``, ``resize_size``, ``interpolation``, ``mean``, ``std``).
    sha256_prefix : str, optional
        Prefix of the published file's SHA-256 (torchvision: the one ``torch.hub`` checks).
    tensors_sha256 : str, optional
        Digest of the entry's tensors (:func:`featurebank.export._zoo.tensors_sha256`).
    """

    source: str
    arch: str
    name: str
    transform: Callable[[], dict[str, Any]]
    sha256_prefix: str | None = None
    tensors_sha256: str | None = None

    def matches(self, file_sha256: str | None, tensors: Callable[[], str]) -> bool:
        if self.sha256_prefix and file_sha256:
            return file_sha256.startswith(self.sha256_prefix)
        return bool(self.tensors_sha256) and tensors() == self.tensors_sha256


@dataclass(frozen=True)
class TransformOrigin:
    """Where an export's eval transform came from (recorded in the ONNX metadata, never in the
    spec: the fingerprint does not move). ``kind`` is ``published`` (the weights are a known
    entry), ``library`` (the library's own pretrained weights), ``assumed`` (unknown weights:
    the default entry's transform) or ``stated`` (set with ``--resize`` and friends)."""

    kind: str
    entry: str
    how: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "entry": self.entry, "how": self.how}


_REGISTERED: list[PublishedWeights] = []


def register_weights(entry: PublishedWeights) -> None:
    """Add ``entry`` to the table (searched before the library's entries)."""
    _REGISTERED.insert(0, entry)


def unregister_weights(entry: PublishedWeights) -> None:
    """Remove an entry added with :func:`register_weights` (tests restore the table)."""
    _REGISTERED.remove(entry)


def torchvision_transform(weights: Any) -> dict[str, Any]:
    """A torchvision weights entry's eval transform as Preprocessing fields."""
    t = weights.transforms()
    crop = int(t.crop_size[0])
    return dict(input_size=(crop, crop), resize_size=int(t.resize_size[0]),
                interpolation=t.interpolation.value, mean=tuple(t.mean), std=tuple(t.std))


def torchvision_entries(arch: str) -> list[PublishedWeights]:
    """The library's weights entries of ``arch``, with the hash prefix of each file's URL."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
    except Exception:  # noqa: BLE001 - an architecture without published weights
        return []
    entries = []
    for weights in enum:
        found = HASH_REGEX.search(weights.url.rsplit("/", 1)[-1])
        if found and found.group(1):
            entries.append(PublishedWeights("torchvision", arch, weights.name,
                                            partial(torchvision_transform, weights),
                                            sha256_prefix=found.group(1)))
    return entries


def identify_weights(source: str, arch: str, file_sha256: str | None,
                     tensors: Callable[[], str]) -> PublishedWeights | None:
    """The published entry whose file (by SHA-256 prefix) or tensors (by digest, computed only
    when an entry needs it) these weights are, else None."""
    candidates = [e for e in _REGISTERED if e.source == source and e.arch == arch]
    if source == "torchvision":
        candidates += torchvision_entries(arch)
    return next((e for e in candidates if e.matches(file_sha256, tensors)), None)
