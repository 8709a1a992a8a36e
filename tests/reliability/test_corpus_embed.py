"""The whole corpus through ``featurebank embed``: good files become rows, bad ones failures."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.harness.corpus import ANY, FAIL, OK, build_corpus, reference_rgb
from benchmarks.harness.decode import KNOWN_BUGS
from benchmarks.harness.faults import REPO, embed_command, subprocess_env


def _key(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, lite0_onnx):
    folder = tmp_path_factory.mktemp("corpus-embed")
    kinds = build_corpus(folder)
    store = folder.parent / (folder.name + ".h5")
    out = subprocess.run(embed_command(folder, store), capture_output=True, text=True,
                         timeout=600, env=subprocess_env(), cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    from featurebank.extractor.store._store import FeatureStore

    fs = FeatureStore(store)
    feats = fs.read()
    rows = dict(zip(feats.keys.tolist(), feats.X, strict=True))
    failures = dict(fs.failures())
    return kinds, rows, failures


def test_every_kind_lands_where_expected(embedded):
    kinds, rows, failures = embedded
    wrong = []
    for k in kinds:
        expect = k.expect
        if k.unprivileged and os.geteuid() == 0:
            expect = OK  # root reads mode-000 files
        if k.name in KNOWN_BUGS:
            expect = ANY  # its own xfail test in test_decode_corpus holds the exact expectation
        if expect == OK and (k.path in failures or _key(k.path) not in rows):
            wrong.append(f"{k.name}: expected a row, got failure {failures.get(k.path)!r}")
        elif expect == FAIL:
            if k.path not in failures:
                wrong.append(f"{k.name}: expected a failure /{k.reason}/, none recorded")
            elif not re.search(k.reason, failures[k.path]):
                wrong.append(f"{k.name}: reason {failures[k.path]!r} !~ /{k.reason}/")
        elif k.path not in failures and _key(k.path) not in rows:  # ANY: one or the other
            wrong.append(f"{k.name}: neither a row nor a failure")
    assert not wrong, wrong


def test_lossless_kinds_embed_to_the_reference_vector(embedded):
    kinds, rows, _ = embedded
    by_name = {k.name: k for k in kinds}
    ref = rows[_key(by_name["reference.png"].path)].astype(np.float32)
    same = [k for k in kinds if k.ref_equal == 0.0]
    assert len(same) >= 7
    for k in same:
        vec = rows[_key(k.path)].astype(np.float32)
        assert np.allclose(vec, ref, atol=1e-3, rtol=1e-3), k.name
    # lossy re-encodings stay close, and a different photo does not
    jpeg = rows[_key(by_name["baseline.jpg"].path)].astype(np.float32)
    other = rows[_key(by_name["exif_orientation_1.jpg"].path)].astype(np.float32)

    def cos(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    print(f"cos(jpeg, ref) = {cos(jpeg, ref):.3f}, cos(marker, ref) = {cos(other, ref):.3f}")
    assert cos(jpeg, ref) > 0.9 and cos(other, ref) < cos(jpeg, ref) - 0.2


def test_fifo_in_folder_does_not_hang(tmp_path, lite0_onnx):
    """A named pipe called *.jpg (no writer) once hung the whole run; now it is a failure."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(reference_rgb()).save(folder / "good.jpg", quality=92)
    os.mkfifo(folder / "pipe.jpg")
    try:
        out = subprocess.run(embed_command(folder, tmp_path / "s.h5"), capture_output=True,
                             text=True, timeout=15, env=subprocess_env(), cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail("embed hung on a FIFO for 15 s (a clean run of one image takes ~5 s)")
    assert out.returncode == 0, out.stderr[-800:]
    from featurebank.extractor.store._store import FeatureStore

    fs = FeatureStore(tmp_path / "s.h5")
    assert len(fs.read().X) == 1 and [os.path.basename(p) for p, _ in fs.failures()] == ["pipe.jpg"]


def test_non_utf8_folder_name_as_label(tmp_path, lite0_onnx):
    from featurebank.extractor.store._store import FeatureStore

    label_dir = os.path.join(os.fsencode(tmp_path / "in"), b"lab\xe9l")
    os.makedirs(label_dir)
    Image.fromarray(reference_rgb()).save(os.fsdecode(os.path.join(label_dir, b"x.jpg")))
    out = subprocess.run(embed_command(tmp_path / "in", tmp_path / "s.h5"), capture_output=True,
                         text=True, timeout=120, env=subprocess_env(), cwd=REPO)
    assert out.returncode == 0, out.stderr[-800:]
    feats = FeatureStore(tmp_path / "s.h5").read()
    assert len(feats.X) == 1 and feats.y[0] == os.fsdecode(b"lab\xe9l")
