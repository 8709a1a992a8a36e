"""``--exclude FILE``: content keys left out of training (``featurebank audit`` writes such a
file, ``exclude.txt``; its CSVs, with a ``key`` or ``train_key`` column, work too)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from featurebank.errors import FeaturebankError

__all__ = ["read_exclusions"]

_KEY = re.compile(r"[0-9a-f]{64}")


def read_exclusions(path: str | Path) -> frozenset[str]:
    """The content keys (SHA-256 hex) listed in ``path``.

    A text file holds one key per line (``#`` starts a comment, blank lines are skipped); a
    ``.csv`` file gives them in its ``key`` column (``train_key`` for ``leaks.csv``). A line
    that is not a key is refused with its number: a mistyped key would silently keep an image.
    """
    p = Path(path)
    if not p.is_file():
        raise FeaturebankError(f"exclusions file {p}: no such file ('featurebank audit "
                               "--report DIR' writes DIR/exclude.txt)")
    if p.suffix.lower() == ".csv":
        with open(p, newline="") as f:
            reader = csv.DictReader(f)
            column = next((c for c in ("key", "train_key") if c in (reader.fieldnames or ())), None)
            if column is None:
                raise FeaturebankError(f"exclusions file {p}: a CSV needs a 'key' or 'train_key' "
                                       f"column, got {reader.fieldnames}")
            entries = [(i + 2, row[column].strip()) for i, row in enumerate(reader)]
    else:
        entries = [(i + 1, line.split("#", 1)[0].strip())
                   for i, line in enumerate(p.read_text().splitlines())]
    keys = []
    for number, text in entries:
        if not text:
            continue
        if not _KEY.fullmatch(text.lower()):
            raise FeaturebankError(f"exclusions file {p}, line {number}: {text[:80]!r} is not "
                                   "a content key (64 hex digits, the SHA-256 of an image file)")
        keys.append(text.lower())
    return frozenset(keys)
