"""The candidates of a comparison, checked before any work: backbones, their cuts, the data.

Every problem found is reported at once, in one error, before a store is created: an unknown
backbone, an ONNX file that is not self-describing (with the ``adopt`` command to run), a cut a
backbone lacks, an unlabelled or one-class collection, a missing output folder.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from featurebank.errors import FeaturebankError


@dataclass(frozen=True)
class Backbone:
    """One backbone as ``compare`` runs it."""

    name: str  #: as the user named it (registry name or ONNX path)
    model: str  #: what FeatureOptions(model=...) takes: the registry name or the file's path
    label: str  #: short, for tables and file names
    cuts: tuple[str, ...]  #: the cuts compared, catalogue order (shallow to deep)
    flops: tuple[float | None, ...]  #: FLOPs share of each cut (None where unknown)
    catalogue: tuple[str, ...] = ()  #: every layer of its catalogue, shallow to deep

    @property
    def is_file(self) -> bool:
        return self.model.lower().endswith(".onnx")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "model"


def _onnx_backbone(name: str) -> tuple[str, str, list]:
    from featurebank.export import read_onnx_metadata

    path = Path(name).expanduser().resolve()
    if not path.is_file():
        raise FeaturebankError(f"model {name}: no such ONNX file")
    info = read_onnx_metadata(path)
    if info.spec is None:
        raise FeaturebankError(
            f"model {name}: this ONNX file is not self-describing (no featurebank metadata: "
            f"preprocessing, layers); run 'featurebank adopt {name} -o ADOPTED.onnx' (with "
            "its input size, mean and std), then compare ADOPTED.onnx")
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    return str(path), f"{_slug(path.stem)}-{digest}", info.layers


def _registry_backbone(name: str) -> tuple[str, str, list]:
    from featurebank.export import ensure_exported, get_model_entry, read_onnx_metadata

    get_model_entry(name)  # an unknown name, or a library that does not import here
    return name, _slug(name), read_onnx_metadata(ensure_exported(name)).layers


def resolve_backbones(models: tuple[str, ...], layers: tuple[str, ...] | None) -> list[Backbone]:
    """The backbones, with the cuts to compare; every problem reported in one error."""
    from featurebank.export import is_onnx_path

    problems: list[str] = []
    out: list[Backbone] = []
    seen: set[str] = set()
    for name in models:
        try:
            model, label, catalogue = (_onnx_backbone(name) if is_onnx_path(name)
                                       else _registry_backbone(name))
        except FeaturebankError as exc:
            problems.append(str(exc))
            continue
        if model in seen:
            problems.append(f"model {name} is given twice")
            continue
        seen.add(model)
        known = [la for la in catalogue if la.name != "logits"]
        if layers:
            missing = [c for c in layers if c not in {la.name for la in known}]
            if missing:
                problems.append(
                    f"model {name} has no cut {', '.join(missing)}; its cuts are "
                    f"{', '.join(la.name for la in known)} ('featurebank layers {name}')")
                continue
            known = [la for la in known if la.name in layers]
        if not known:
            problems.append(f"model {name} offers no cut to compare")
            continue
        out.append(Backbone(name, model, label, tuple(la.name for la in known),
                            tuple(la.flops_share for la in known),
                            tuple(la.name for la in catalogue)))
    if problems:
        raise FeaturebankError("compare cannot start:\n  " + "\n  ".join(problems))
    return out


def _store_as_list(store: str, out: Path) -> Path:
    """A list file (path,label) of the labelled images a store holds, so that every backbone
    embeds the same images; images that are gone are refused."""
    from featurebank.classical import labelled_only, load_features
    from featurebank.extractor.store import FeatureStore

    fs = FeatureStore(store)
    sets = fs.feature_sets()
    if not sets:
        raise FeaturebankError(f"store {store} holds no feature set, so no image list")
    data = labelled_only(load_features(fs, fingerprints=[sets[0].fingerprint]), f"store {store}")
    missing = [p for p in data.paths if "://" not in str(p) and "#" not in str(p)
               and not Path(str(p)).is_file()]
    if missing:
        raise FeaturebankError(f"compare re-embeds the images of store {store}, but "
                               f"{len(missing)} are missing (e.g. {missing[0]}); put them back "
                               "or give the image folder")
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows(zip(data.paths, data.y, strict=True))
    return out


def is_store(path: str) -> bool:
    return Path(path).is_file() and Path(path).suffix.lower() in (".h5", ".hdf5")


def check_collection(source: str, role: str, work_dir: Path | None = None) -> tuple[str, dict]:
    """``source`` as embeddable input (a store becomes a list file in ``work_dir``) and its
    images per label; an unlabelled or one-class collection is refused.

    With ``work_dir`` None, a store is only checked (the list is written later)."""
    from featurebank.extractor import collect

    if is_store(source):
        if work_dir is None:
            from featurebank.extractor.store import FeatureStore

            if not FeatureStore(source).feature_sets():
                raise FeaturebankError(f"{role} {source}: the store holds no feature set")
            return source, {}
        source = str(_store_as_list(source, work_dir / f"{role.lower()}-images.csv"))
    items = [it for it in collect([source]) if not it.error]
    labels = Counter(it.label for it in items if it.label)
    if not labels:
        raise FeaturebankError(
            f"{role} {source}: no image has a label; give a folder whose sub-folders are the "
            "class names (ImageFolder layout) or a list file with 'path,label' lines")
    if len(labels) < 2:
        raise FeaturebankError(f"{role} {source}: one class only ({next(iter(labels))}); "
                               "comparing classifiers needs two or more")
    return source, dict(sorted(labels.items()))
