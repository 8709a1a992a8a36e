"""Extractor: images in, vectors out; matches the graph; pickles; names bad images."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from featurebank.errors import FeaturebankError
from featurebank.extractor import DecodeError, Extractor, decode


@pytest.fixture(scope="module")
def ex(lite0_onnx) -> Extractor:
    return Extractor(lite0_onnx, layers=("blocks.10", "head"), device="cpu", threads=2,
                     batch_size=2)


def test_init_is_lazy_and_stores_params(lite0_onnx):
    e = Extractor("no_such_model", layers=["head"], pool="gem", gem_p=4.0)
    o = e.options
    assert (e.model, e.layers, o.pool, o.gem_p, o.preprocessing) == ("no_such_model", ("head",),
                                                                    "gem", 4.0, None)
    with pytest.raises(FeaturebankError, match="no_such_model"):
        _ = e.specs  # the error comes when the graph is first needed
    with pytest.raises(FeaturebankError, match="does not exist"):
        _ = Extractor("missing.onnx").specs


def test_embed_sources_and_layers(ex, photo_dir, real_photos):
    paths = sorted(photo_dir.rglob("*.jpg"))[:3]
    assert [s.layer for s in ex.specs] == ["blocks.10", "head"]
    assert ex.output_shapes == {"blocks.10": ("N", 112), "head": ("N", 1280)}
    out = ex.embed(paths)
    assert set(out) == {"blocks.10", "head"}
    assert out["head"].shape == (3, 1280) and out["head"].dtype == np.float32
    assert out["blocks.10"].shape == (3, 112)
    # str paths, bytes and PIL images of the same files give the same vectors (batch of 2 + 1)
    for srcs in ([str(p) for p in paths], [p.read_bytes() for p in paths],
                 [Image.open(p) for p in paths]):
        np.testing.assert_allclose(ex.embed(srcs)["head"], out["head"], atol=1e-5)
    # embed == decode + embed_pixels
    px = np.stack([decode(p, ex.spec_preprocessing) for p in paths])
    np.testing.assert_allclose(ex.embed_pixels(px)[1], out["head"], atol=1e-5)
    # different photos give different vectors
    assert np.linalg.norm(out["head"][0] - out["head"][1]) > 1.0


def test_single_image_single_layer_and_imagenet_sense(lite0_onnx, real_photos):
    """The 'logits' cut on a real cat photo ranks a cat class first (the model is real)."""
    from featurebank.export import imagenet_classes

    e = Extractor(lite0_onnx, layers=["logits"], pool="none", device="cpu", threads=2)
    one = e.embed(real_photos["chelsea"])  # one image, one layer: still a dict of [N, D]
    assert list(one) == ["logits"] and one["logits"].shape == (1, 1000)
    top = imagenet_classes()[int(one["logits"][0].argmax())].lower()
    assert "cat" in top or "tabby" in top, top
    assert e.embed([])["logits"].shape == (0, 1000)


def test_bad_image_is_named(ex, tmp_path, photo_dir):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    good = next(photo_dir.rglob("*.jpg"))
    with pytest.raises(DecodeError) as err:
        ex.embed([good, bad])
    assert "broken.jpg" in str(err.value) and err.value.reason.startswith("not an image")
    with pytest.raises(DecodeError, match=r"images\[1\]: empty file"):
        ex.embed([good.read_bytes(), b""])


def test_embed_pixels_checks_shape(ex):
    with pytest.raises(FeaturebankError, match="224, 224, 3"):
        ex.embed_pixels(np.zeros((1, 100, 100, 3), np.uint8))
    outs = ex.embed_pixels(np.zeros((0, 224, 224, 3), np.uint8))
    assert [o.shape for o in outs] == [(0, 112), (0, 1280)]


def test_pickle_round_trip_same_vectors(ex, real_photos):
    images = [real_photos["coffee"], real_photos["rocket"]]
    before = ex.embed(images)
    blob = pickle.dumps(ex)
    assert len(blob) < 10_000  # no session, no graph inside
    clone = pickle.loads(blob)
    assert clone._session is None and clone.layers == ex.layers
    after = clone.embed(images)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


def test_registry_name_exports_through_cache(model_cache, real_photos):
    from featurebank.export._cache import cached_path

    e = Extractor("efficientnet_lite0", layers="head", normalize=True, device="cpu", threads=2)
    v = e.embed([real_photos["astronaut"]])["head"]
    assert cached_path("efficientnet_lite0").parent == model_cache  # the session's, not ~/.cache
    assert cached_path("efficientnet_lite0").is_file()
    assert v.shape == (1, 1280)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert e.specs[0].model.model == "efficientnet_lite0" and e.specs[0].normalize
