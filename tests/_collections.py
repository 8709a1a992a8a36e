"""The same real images (scikit-learn's digits) as a folder and as every other input kind:
webdataset tar shards, parquet files with image bytes, list files. Shared by the local and
the S3 source tests (and the Ray ones): the stores they give must hold the same vectors."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASS_NAMES = ["zero", "one", "two"]


def digit_images(per_class: int = 3) -> list[tuple[str, str, bytes]]:
    """``(key, label, png bytes)`` of ``per_class`` digits of each class in CLASS_NAMES."""
    from sklearn.datasets import load_digits

    d = load_digits()
    out = []
    for c, name in enumerate(CLASS_NAMES):
        for i in np.flatnonzero(d.target == c)[:per_class]:
            buf = io.BytesIO()
            Image.fromarray((d.images[i] * (255.0 / 16.0)).astype(np.uint8), "L").save(buf, "PNG")
            out.append((f"{i:05d}", name, buf.getvalue()))
    return out


def write_folder(root: Path, images) -> Path:
    for key, label, data in images:
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / f"{key}.png").write_bytes(data)
    return root


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_shard(path: Path, images, label_member: str = "cls") -> Path:
    """A webdataset shard: ``KEY.png`` and ``KEY.cls`` (class index as text, the label's name
    here) or ``KEY.json`` (``{"label": ...}``), in webdataset's key order."""
    with tarfile.open(path, "w") as tf:
        for key, label, data in images:
            meta = label.encode() if label_member == "cls" else json.dumps({"label": label}).encode()
            _add(tf, f"{key}.{label_member}", meta)
            _add(tf, f"{key}.png", data)
    return path


def write_hf_parquet(path: Path, images, row_group_size: int = 4) -> Path:
    """A Hugging Face datasets export: ``image`` struct ``{bytes, path}``, ``label`` a
    ClassLabel index whose names are in the file's ``huggingface`` metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"image": [{"bytes": d, "path": f"{k}.png"} for k, _, d in images],
                      "label": [CLASS_NAMES.index(lab) for _, lab, _ in images]})
    meta = {"info": {"features": {"image": {"_type": "Image"},
                                  "label": {"names": CLASS_NAMES, "_type": "ClassLabel"}}}}
    table = table.replace_schema_metadata({"huggingface": json.dumps(meta)})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def write_bytes_parquet(path: Path, images, column: str = "jpg") -> Path:
    """Image bytes in a plain binary column (beside a second one), labels as strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({column: [d for _, _, d in images],
                             "thumb": [d[:16] for _, _, d in images],
                             "label": [lab for _, lab, _ in images]}), path)
    return path


def folder_reference(root: Path, images, extractor) -> dict:
    """Embed the images as a folder: content key -> (vector, label) of its store."""
    from featurebank.extractor import FeatureStore, embed_collection

    store = root / "folder.h5"
    embed_collection([str(write_folder(root / "images", images))], store, extractor=extractor,
                     dtype="float32", progress=False, batch_size=4)
    f = FeatureStore(store).read()
    return {k: (x, y) for k, x, y in zip(f.keys, f.X, f.y, strict=True)}


def assert_same_as_folder(store, reference: dict, expected_rows: int | None = None):
    """Same content keys, labels and vectors as the folder's store, row for row, and each
    stored path reads back the very bytes its key was computed from (features stay aligned
    with their sources). Returns the store's features."""
    import hashlib

    from featurebank.extractor import FeatureStore
    from featurebank.extractor.sources import open_source

    f = FeatureStore(store).read()
    assert len(f.keys) == (expected_rows or len(reference))
    for key, x, y, path in zip(f.keys, f.X, f.y, f.paths, strict=True):
        ref_x, ref_y = reference[key]
        assert y == ref_y, (path, y, ref_y)
        np.testing.assert_allclose(x, ref_x, rtol=1e-4, atol=1e-5)
        assert hashlib.sha256(open_source(path)).hexdigest() == key, path
    assert FeatureStore(store).failures() == []
    return f


def reference_fixtures():
    """The module fixtures every input-kind test module shares: ``images`` (digits, 3 per
    class), ``extractor`` (Lite0's ``head``, one thread) and ``reference`` (the folder's
    vectors each input kind must give). ``images, extractor, reference = reference_fixtures()``
    at a module's top level declares them there."""
    @pytest.fixture(scope="module")
    def images():
        return digit_images(per_class=3)

    @pytest.fixture(scope="module")
    def extractor(lite0_onnx):
        from featurebank.extractor import Extractor

        return Extractor("efficientnet_lite0", layers=("head",), threads=1)

    @pytest.fixture(scope="module")
    def reference(tmp_path_factory, images, extractor):
        return folder_reference(tmp_path_factory.mktemp("ref"), images, extractor)

    return images, extractor, reference
