"""The one check_writable and the one is_onnx_path (featurebank.paths), and is_sharded's one
home (featurebank.extractor.store): issue 31, item 4."""

from __future__ import annotations

import os

import joblib
import onnx
import pytest
from onnx import TensorProto, helper

from featurebank.errors import FeaturebankError
from featurebank.paths import check_writable, is_onnx_path


def _tiny_onnx(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_check_writable_names_the_path_and_why(tmp_path):
    assert check_writable(tmp_path / "out.onnx") == tmp_path / "out.onnx"
    assert not list(tmp_path.iterdir())  # the probe leaves nothing behind
    with pytest.raises(FeaturebankError, match=r"folder .*missing does not exist"):
        check_writable(tmp_path / "missing" / "x.npz")
    with pytest.raises(FeaturebankError, match=r"is a folder; give a file name ending in \.onnx"):
        check_writable(tmp_path, suffix=".onnx")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FeaturebankError, match=r"folder .*file is not a folder"):
        check_writable(tmp_path / "file" / "x.npz", what="export")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_writable_probes_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(FeaturebankError, match="cannot write output"):
            check_writable(folder / "x.joblib")
    finally:
        folder.chmod(0o700)


def test_is_onnx_path_tells_networks_from_names_and_classifiers(tmp_path):
    assert is_onnx_path("missing/MODEL.ONNX")  # by name, before it exists (an output)
    assert is_onnx_path(_tiny_onnx(tmp_path / "adopted.bin"))  # by content, any name
    for compress in (0, 3):  # what `featurebank train` writes (compressed) and plain pickles
        joblib.dump({"format": "x"}, tmp_path / f"c{compress}.joblib", compress=compress)
        assert not is_onnx_path(tmp_path / f"c{compress}.joblib")
    assert not is_onnx_path("efficientnet_lite0") and not is_onnx_path(tmp_path)


def test_one_definition_each():
    """The copies the issue counted are gone: each helper is defined once in the package."""
    from benchmarks.harness.faults import REPO

    defined = {"def check_writable": [], "def is_onnx_path": [], "def is_sharded": [],
               "def _check_writable": [], "_is_sharded": []}
    for folder in ("featurebank", "export", "extractor", "classical", "finetune"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            for key, where in defined.items():
                if key in text:
                    where.append(path.relative_to(REPO).as_posix())
    assert defined == {"def check_writable": ["featurebank/paths.py"],
                       "def is_onnx_path": ["featurebank/paths.py"],
                       "def is_sharded": ["extractor/store/_format.py"],
                       "def _check_writable": [], "_is_sharded": []}


def test_write_json_replaces_whole_and_writes_paths_and_numpy_values(tmp_path, monkeypatch):
    """Every report's JSON goes through ``write_json``: a failed write leaves the old file
    whole (no half report), and paths or numpy scalars come out as text and numbers."""
    import json
    import os

    import numpy as np

    from featurebank.paths import write_json

    out = write_json({"a": np.float32(0.5), "where": tmp_path, "n": np.int64(3)},
                     tmp_path / "r.json")
    assert json.loads(out.read_text()) == {"a": 0.5, "where": str(tmp_path), "n": 3}

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        write_json({"a": 1}, out)
    assert json.loads(out.read_text())["n"] == 3  # the old report, whole


def test_check_folder_refuses_what_cannot_hold_a_report(tmp_path):
    """One check for output folders (reports, work folders), before any work: a file in the
    way, a missing parent; an existing folder or a new one in an existing folder passes."""
    from featurebank.paths import check_folder

    (tmp_path / "file").write_text("x")
    with pytest.raises(FeaturebankError, match="report .*file: it exists and is not a folder"):
        check_folder(tmp_path / "file")
    with pytest.raises(FeaturebankError, match=r"work folder .*: folder .*no does not exist"):
        check_folder(tmp_path / "no" / "r", what="work folder")
    assert check_folder(tmp_path) == tmp_path and check_folder(tmp_path / "new") == tmp_path / "new"
    assert not (tmp_path / "new").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("command", ["evaluate", "sweep", "finetune"])
def test_a_report_folder_that_cannot_be_made_is_refused_first(tmp_path, command):
    """evaluate, sweep and finetune refuse a report folder whose parent is missing before
    reading a store or training (here there is no store at all: the folder is named first)."""
    from featurebank.classical import evaluate, sweep
    from featurebank.finetune import finetune

    report = tmp_path / "missing" / "report"
    run = {"evaluate": lambda: evaluate(None, tmp_path / "absent.h5", report),
           "sweep": lambda: sweep(tmp_path / "absent.h5", report=report),
           "finetune": lambda: finetune(tmp_path, output=tmp_path / "t.onnx", report=report)}
    with pytest.raises(FeaturebankError, match="cannot write report .*missing does not exist"):
        run[command]()
    assert list(tmp_path.iterdir()) == []
