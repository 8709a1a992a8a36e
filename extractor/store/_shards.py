"""A sharded feature store: many shard files, one manifest, one virtual HDF5 file over them.

Distributed writers (the Ray engine) cannot share one HDF5 file, so each write task writes its
own *shard* -- a complete store in the ordinary layout (docs/STORE_FORMAT.md) -- under
``STORE.h5.shards/``, first under a temporary name and then renamed: the rename is the commit,
so a shard is either whole or absent. The driver then (re)builds:

- ``STORE.h5.shards/manifest.json`` (atomically replaced): the shards and their row counts;
- ``STORE.h5`` itself: an HDF5 file with the store's groups whose datasets are *virtual*
  (``h5py.VirtualLayout``) over the shards' committed rows, with rows whose content key was
  already mapped from an earlier shard left out. Readers (``FeatureStore``, ``classical``,
  the service, plain h5py) open it like any store.

The shard files are the truth; manifest and virtual file are rebuilt from them at the start
and end of every run, so a driver killed at any moment loses at most the shards in flight.
This module never imports Ray.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from featurebank.errors import FeaturebankError
from featurebank.extractor.store._format import SHARDED_ATTR, is_sharded, write_roots
from featurebank.extractor.store._lock import WriterLock
from featurebank.extractor.store._shard_index import (
    IDENT,
    dtype_of,
    index_path,
    read_index,
    write_index,
)
from featurebank.extractor.store._store import FORMAT_VERSION, FeatureStore, upgrade_message
from featurebank.spec import FeatureSpec

MANIFEST = "manifest.json"

def shard_dir(store_path: str | Path) -> Path:
    """The folder holding the shards of ``store_path``: ``STORE.h5.shards``."""
    p = Path(store_path)
    return p.with_name(p.name + ".shards")


def write_shard(folder: str | Path, name: str,
                rows: dict[FeatureSpec, tuple[list[str], np.ndarray]],
                images: list[tuple[str, str, str]], failures: list[tuple[str, str]],
                dtype: str = "float16", roots: Iterable[str | Path] | None = None,
                attrs: dict | None = None) -> Path:
    """Write one shard atomically: a temporary file in the store layout, then a rename.

    A retried task writing the same ``name`` replaces the earlier file with equal content.
    ``attrs`` (JSON-able values) go to the shard's root attributes, e.g. the Ray nodes that
    computed its rows.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / name
    tmp = folder / f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        with FeatureStore(tmp, mode="a") as shard:
            shard.commit(rows, images, failures, dtype=dtype, roots=roots)
        if attrs:
            with h5py.File(tmp, "a", locking=False) as f:
                f.attrs.update({k: json.dumps(v) for k, v in attrs.items()})
        with open(tmp, "rb+") as f:  # the rename below must not expose unflushed data
            os.fsync(f.fileno())
        write_index(tmp, index_path(final))  # before the rename: a committed shard has its index
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
        Path(str(tmp) + ".lock").unlink(missing_ok=True)
    return final


@dataclass
class ShardState:
    """What the committed shards hold after a rebuild."""

    shards: list[str] = field(default_factory=list)
    keys: dict[str, set[str]] = field(default_factory=dict)  # fingerprint -> content keys
    dtypes: dict[str, str] = field(default_factory=dict)  # fingerprint -> storage dtype
    images: int = 0
    failures: int = 0

    def done(self, fingerprints: Iterable[str]) -> set[str]:
        """Content keys that have a row in every one of ``fingerprints``."""
        sets = [self.keys.get(fp, set()) for fp in fingerprints]
        return set.intersection(*sets) if sets else set()


class ShardedStore:
    """Writer side of a sharded store at ``path`` (the file readers open).

    Use as a context manager: it holds the same writer lock as :class:`FeatureStore`
    (``STORE.h5.lock``), so a local and a distributed run cannot write one store at once.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.dir = shard_dir(self.path)
        self._lock: WriterLock | None = None

    def __enter__(self) -> ShardedStore:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FeaturebankError(f"cannot write store {self.path}: {exc.strerror}") from exc
        # the same lock as FeatureStore: a local and a Ray run never write one store at once
        self._lock = WriterLock(self.path).acquire()
        try:
            self.dir.mkdir(exist_ok=True)
            self._adopt_plain_store()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _adopt_plain_store(self) -> None:
        """A store written by the local engine becomes the first shard (nothing is re-embedded)."""
        if self.path.is_file() and not is_sharded(self.path):
            store = FeatureStore(self.path, mode="r")  # refuses files that are not stores
            if store.format_version < FORMAT_VERSION:
                raise FeaturebankError(upgrade_message(self.path, store.format_version))
            os.replace(self.path, self.dir / f"shard-0-base-{uuid.uuid4().hex[:8]}.h5")

    def new_run_id(self) -> str:
        """Sortable prefix for this run's shard names: shards of later runs map after earlier ones."""
        return f"shard-{time.time_ns():020d}"

    def committed_shards(self) -> list[str]:
        return sorted(self._shard_sizes())

    def _shard_sizes(self) -> dict[str, int]:
        """Committed shard name -> size in bytes (one directory scan)."""
        with os.scandir(self.dir) as it:
            return {e.name: e.stat().st_size for e in it
                    if e.name.startswith("shard-") and e.name.endswith(".h5")}

    def rebuild(self) -> ShardState:
        """Rebuild manifest and virtual file from the committed shards; return what they hold."""
        if self._lock is None:
            raise FeaturebankError(f"store {self.path}: rebuild needs the writer lock (use 'with')")
        sizes = self._shard_sizes()
        names = sorted(sizes)
        self._check_manifest(names)
        state = ShardState(shards=names)
        merged: dict[str, _Merge] = {}
        specs: dict[str, dict] = {}
        roots: list[str] = []
        for name in names:
            # The shard's key index: its identity columns and shapes, no HDF5 opened.
            index = read_index(self.dir / name, sizes[name])
            version = index["format_version"]
            if version != FORMAT_VERSION:
                raise FeaturebankError(
                    f"store {self.path}: shard {name} has format version {version}, this "
                    f"featurebank writes {FORMAT_VERSION}; embed into a new store")
            roots += [r for r in index["roots"] if r not in roots]
            for group, g in index["groups"].items():
                merged.setdefault(group, _Merge()).add(name, g)
                if group.startswith("features/"):
                    fp = group.split("/", 1)[1]
                    specs.setdefault(fp, g["attrs"])
                    state.dtypes.setdefault(fp, str(dtype_of(g["datasets"]["X"]["dtype"])))
        rel = os.path.relpath(self.dir, self.path.parent)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with h5py.File(tmp, "w", locking=False) as f:
                f.attrs["format_version"] = FORMAT_VERSION
                f.attrs[SHARDED_ATTR] = True
                write_roots(f, roots)
                for group in (*IDENT, "features"):
                    f.require_group(group)
                for group, m in merged.items():
                    g = f.require_group(group)
                    if group.startswith("features/"):
                        g.attrs.update(specs[group.split("/", 1)[1]])
                    m.write(g, rel)
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        for fp in specs:
            state.keys[fp] = merged[f"features/{fp}"].seen_keys()
        state.images = merged["images"].rows if "images" in merged else 0
        state.failures = merged["failures"].rows if "failures" in merged else 0
        self._write_manifest(state, merged, specs, sizes)
        return state

    # -- manifest --------------------------------------------------------------------------
    def _check_manifest(self, names: list[str]) -> None:
        """A shard the manifest lists but the folder lacks would read as zeros: refuse."""
        path = self.dir / MANIFEST
        if not path.is_file():
            return
        try:
            listed = {s["name"] for s in json.loads(path.read_text())["shards"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise FeaturebankError(f"{path} is damaged ({exc}); delete it, it is rebuilt from "
                                   "the shards") from None
        missing = sorted(listed - set(names))
        if missing:
            raise FeaturebankError(
                f"store {self.path}: shard(s) {', '.join(missing[:5])} listed in {path} are missing "
                f"from {self.dir}; restore them, or delete {path} to accept the loss")

    def _write_manifest(self, state: ShardState, merged: dict, specs: dict,
                        sizes: dict[str, int]) -> None:
        doc = {
            "format": "featurebank-sharded-store", "format_version": FORMAT_VERSION,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "images": state.images, "failures": state.failures,
            "feature_sets": {fp: {"spec": json.loads(s["spec"]), "dim": int(s["dim"]),
                                  "dtype": state.dtypes[fp], "rows": len(state.keys[fp])}
                             for fp, s in specs.items()},
            "shards": [{"name": n, "bytes": sizes[n],
                        "rows": {g: m.per_shard.get(n, 0) for g, m in merged.items()}}
                       for n in state.shards],
        }
        path = self.dir / MANIFEST
        tmp = path.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, separators=(",", ":")))  # 20 MB at 100k shards: compact
        os.replace(tmp, path)


class _Merge:
    """The rows of one group across shards, first occurrence of each identity only."""

    def __init__(self) -> None:
        self.cols: list[str] = []
        self.seen: set = set()
        # shard, dataset shapes, runs [a, b) of the rows kept (first occurrences)
        self.sources: list[tuple[str, dict[str, tuple], list[tuple[int, int]]]] = []
        self.dtypes: dict[str, np.dtype] = {}
        self.tails: dict[str, tuple] = {}  # shape after the row axis
        self.per_shard: dict[str, int] = {}
        self.rows = 0

    def add(self, shard: str, g: dict) -> None:
        """Add one shard's group, as its key index describes it."""
        for c, ds in g["datasets"].items():
            if c not in self.dtypes:
                self.cols.append(c)
                self.dtypes[c], self.tails[c] = dtype_of(ds["dtype"]), tuple(ds["shape"][1:])
        if not g["committed"]:
            return
        cols = list(g["ident"].values())
        # A one-column identity is the value itself: no tuple per row (memory at 10M rows).
        rows = cols[0] if len(cols) == 1 else list(zip(*cols, strict=True))
        keep: range | list[int]
        fresh = set(rows)
        if len(fresh) == len(rows) and self.seen.isdisjoint(fresh):
            self.seen |= fresh  # the usual shard: no row seen before, none twice: one run, C speed
            keep = range(len(rows))
        else:
            kept: list[int] = []
            for i, row in enumerate(rows):
                if row not in self.seen:
                    self.seen.add(row)
                    kept.append(i)
            keep = kept
        if keep:
            shapes = {c: tuple(ds["shape"]) for c, ds in g["datasets"].items()}
            self.sources.append((shard, shapes, _runs(keep)))
            self.per_shard[shard] = len(keep)
            self.rows += len(keep)

    def seen_keys(self) -> set[str]:
        """The content keys of a one-column (``keys``) identity."""
        return self.seen

    def write(self, g: h5py.Group, rel: str) -> None:
        g.attrs["committed"] = self.rows
        for c in self.cols:
            tail = self.tails[c]
            if not self.rows:  # a virtual dataset needs a source: an empty plain one instead
                g.create_dataset(c, shape=(0, *tail), maxshape=(None, *tail), dtype=self.dtypes[c])
                continue
            layout = h5py.VirtualLayout(shape=(self.rows, *tail), dtype=self.dtypes[c])
            # Mappings go straight to the property list: h5py's slicing of VirtualSource objects
            # costs ~0.3 ms a mapping, which at 100k shards was most of a rebuild.
            vspace = h5py.h5s.create_simple((self.rows, *tail))
            zeros, dsname = (0,) * len(tail), f"{g.name}/{c}".encode()
            at = 0
            for shard, shapes, runs in self.sources:
                # A column an older shard lacks stays unmapped: readers get its fill value.
                src = h5py.h5s.create_simple(shapes[c]) if c in shapes else None
                fname = f"{rel}/{shard}".encode()
                for a, b in runs:
                    if src is not None:
                        vspace.select_hyperslab((at, *zeros), (b - a, *tail))
                        src.select_hyperslab((a, *zeros), (b - a, *tail))
                        layout.dcpl.set_virtual(vspace, fname, dsname, src)
                    at += b - a
            g.create_virtual_dataset(c, layout)


def _runs(index: range | list[int]) -> list[tuple[int, int]]:
    """Contiguous runs [a, b) of sorted indices: one virtual mapping each."""
    if index[-1] - index[0] + 1 == len(index):  # one run: the usual case, without numpy
        return [(index[0], index[-1] + 1)]
    arr = np.asarray(index)
    breaks = np.flatnonzero(np.diff(arr) != 1) + 1
    return [(int(r[0]), int(r[-1]) + 1) for r in np.split(arr, breaks)]

