"""docs/STORE_FORMAT.md and the files agree: a store written here is compared, name by name,
with the document's tables, and the document's plain-h5py example runs with featurebank hidden.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from featurebank.extractor.store._store import FORMAT_VERSION, FeatureStore
from featurebank.spec import FeatureSpec, ModelSpec

DOC = Path(__file__).resolve().parents[1] / "docs" / "STORE_FORMAT.md"


def _doc_tables() -> dict[str, dict[str, tuple[str, str, str]]]:
    """Section (``/``, ``/images``, ``/features/<fingerprint>``, ...) -> name -> (kind, dtype, shape)."""
    tables: dict[str, dict] = {}
    section = None
    for line in DOC.read_text().splitlines():
        head = re.match(r"^## (?:Root )?`(/[^`]*)`", line)
        if head:
            section = head.group(1)
            tables[section] = {}
            continue
        if line.startswith("## "):
            section = None
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if section and len(cells) == 5 and cells[0].startswith("`"):
            tables[section][cells[0].strip("`")] = (cells[1], cells[2].strip("`"), cells[3].strip("`"))
    return tables


def _dtype_ok(doc: str, obj) -> bool:
    if doc == "vlen bytes":
        return h5py.check_vlen_dtype(obj.dtype) is bytes
    if doc == "vlen utf-8":
        info = h5py.check_string_dtype(obj.dtype)
        return info is not None and info.encoding == "utf-8" and info.length is None
    return obj.dtype in [np.dtype(d.strip("` ")) for d in doc.split(" or ")]


def _attr_ok(doc: str, value) -> bool:
    if doc == "int":
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if doc == "bool":
        return isinstance(value, (bool, np.bool_))
    if doc == "str":
        return isinstance(value, (str, bytes))
    return np.asarray(value).dtype == np.dtype(doc)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """A store with every table filled: images, a second path, two feature sets (vectors in
    float16, maps [C, H, W] in float32), a failure, commits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    keys = [hashlib.sha256(im.tobytes()).hexdigest() for im in d.images[:40]]
    path = tmp_path_factory.mktemp("fmt") / "s.h5"
    model = ModelSpec("efficientnet_lite0", "ab" * 32)
    with FeatureStore(path, mode="a") as s:
        s.add_rows(FeatureSpec(model, "head"), keys, d.data[:40], [f"/d/{i}.png" for i in range(40)],
                   [str(t) for t in d.target[:40]])
        # [40, 16, 8, 8]: 1024 float32 per row, where a float16-sized chunk would be 2 MiB
        maps = np.stack([d.images[:40] * c for c in range(16)], axis=1).astype(np.float32)
        s.add_rows(FeatureSpec(model, "blocks.3", "none"), keys, maps,
                   [f"/d/{i}.png" for i in range(40)], dtype="float32")
        s.add_paths(keys[:2], ["/copy/a.png", "/copy/b.png"], ["x", "y"])
        s.record_failure("/d/broken.png", "truncated image")
        s.commit(roots=["/d"])
    return path


def test_every_documented_name_is_written_and_nothing_else(written):
    doc = _doc_tables()
    assert set(doc) == {"/", "/images", "/paths", "/features/<fingerprint>", "/failures", "/commits"}
    with h5py.File(written, "r") as f:
        groups = {"/": f, **{f"/{g}": f[g] for g in ("images", "paths", "failures", "commits")}}
        for fp, g in f["features"].items():
            groups[f"/features/<fingerprint>:{fp}"] = g
        assert len(f["features"]) == 2
        for where, obj in groups.items():
            table = doc[where.split(":")[0]]
            optional = {n for n, row in table.items() if n == "featurebank_sharded"}
            present = set(obj.attrs) | set(obj)
            assert present == set(table) - optional, (where, present ^ (set(table) - optional))
            for name, (kind, dtype, shape) in table.items():
                if name in optional:
                    continue
                if kind == "attr":
                    assert _attr_ok(dtype, obj.attrs[name]), (where, name, obj.attrs[name])
                elif kind == "dataset":
                    ds = obj[name]
                    assert _dtype_ok(dtype, ds), (where, name, ds.dtype)
                    assert ds.ndim == shape.count(",") + (0 if shape.endswith(",)") else 1), (where, name)
                    assert ds.maxshape[0] is None and ds.chunks is not None
                    limit = (1 << 20) if name == "X" else 1024 * max(ds.dtype.itemsize, 16)
                    assert np.prod(ds.chunks) * ds.dtype.itemsize <= limit, (where, name, ds.chunks)
                    assert len(ds) >= int(obj.attrs["committed"])
                else:
                    assert kind == "group" and isinstance(obj[name], h5py.Group)
        assert int(f.attrs["format_version"]) == FORMAT_VERSION == 3
    doc_text = DOC.read_text()
    assert f"format version {FORMAT_VERSION}" in doc_text.splitlines()[0]


def test_row_shape_and_absolute_paths_as_documented(written):
    from sklearn.datasets import load_digits

    s = FeatureStore(written)
    maps = s.read("blocks.3")
    assert maps.row_shape == (16, 8, 8) and maps.X.shape == (40, 1024)
    np.testing.assert_array_equal(maps.maps()[:, 5], load_digits().images[:40] * 5)
    assert s.read_maps("head").shape == (40, 64)
    np.testing.assert_array_equal(s.rows(maps.spec.fingerprint(), [3, 1], shaped=True),
                                  maps.maps()[[3, 1]])
    with h5py.File(written, "r") as f:
        g = f["features"][maps.spec.fingerprint()]
        assert list(g.attrs["row_shape"]) == [16, 8, 8] and g.attrs["dim"] == 1024
        assert all(bytes(p).startswith(b"/") for p in f["images/paths"][:])
    log = s.commit_log()
    assert log["rows_offered"].tolist() == [40, 40] and log["rows_written"].tolist() == [40, 40]


def _doc_example() -> str:
    text = DOC.read_text()
    start = text.index("## Reading with plain h5py")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block, "the document has no python example under 'Reading with plain h5py'"
    return block.group(1)


def test_doc_example_runs_with_featurebank_not_importable(written, tmp_path):
    # Hide featurebank however it is installed (editable finder, path entry): any import of it
    # fails, exactly as on a machine with only h5py and numpy.
    guard = textwrap.dedent("""
        import sys
        class _NoFeaturebank:
            def find_spec(self, name, path=None, target=None):
                if name == "featurebank" or name.startswith("featurebank."):
                    raise ImportError("featurebank is not installed here")
        sys.meta_path.insert(0, _NoFeaturebank())
        sys.path[:] = [p for p in sys.path if "/work/main" not in p or "site-packages" in p]
    """)
    script = tmp_path / "example.py"
    script.write_text(guard + _doc_example().replace("STORE.h5", str(written)))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    s = FeatureStore(written)
    by_fp = {line.split()[0]: line for line in out}
    for info in s.feature_sets():
        feats = s.read(info.fingerprint)
        line = by_fp[info.fingerprint]
        assert f"{info.spec.layer} {(info.rows, *info.row_shape)}" in line
        assert repr([str(v) for v in feats.y[:2]]) in line and feats.paths[0] in line
    # and the guard really hides it
    check = tmp_path / "check.py"
    check.write_text(guard + "import featurebank\n")
    assert subprocess.run([sys.executable, str(check)], capture_output=True).returncode != 0
