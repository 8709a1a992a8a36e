"""ImageNet-1k class names, index-aligned with the logits of the built-in models."""

from __future__ import annotations

import functools
import json
from importlib import resources


@functools.cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names (WordNet synonyms, comma-separated), by logit index."""
    text = resources.files("export").joinpath("data/imagenet_classes.json").read_text("utf-8")
    names = tuple(json.loads(text))
    if len(names) != 1000:  # a damaged install would silently shift every label
        raise RuntimeError(f"export/data/imagenet_classes.json has {len(names)} names, not 1000")
    return names
