"""On real data (all 1,797 scikit-learn digits), a probe on frozen Lite0 features beats the same
probe on raw pixels. Mid-network cuts carry the stroke-level features that 8x8 scans share with
ImageNet; the head is too specialised (see README: digits figures)."""

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from featurebank.classical import LinearProbe
from featurebank.datasets import load_digits_images

LAYERS = ["blocks.4", "blocks.7", "blocks.10", "blocks.13"]


@pytest.fixture(scope="module")
def digits_features(model_cache):
    from featurebank.extractor import Extractor

    X, y = load_digits_images()
    feats = Extractor(layers=LAYERS, batch_size=64).embed(list(X))
    return X, y, np.hstack([feats[name] for name in LAYERS])


@pytest.mark.slow  # embeds all 1,797 digits at four cuts: ~40-75 s on 2 cores
def test_probe_on_features_beats_raw_pixels_on_digits(digits_features):
    X, y, F = digits_features
    i_tr, i_te = train_test_split(np.arange(len(y)), test_size=0.33, stratify=y, random_state=0)
    pixels = X.reshape(len(X), -1).astype(np.float32) / 255.0
    feat_acc = LinearProbe().fit(F[i_tr], y[i_tr]).score(F[i_te], y[i_te])
    pixel_acc = LinearProbe().fit(pixels[i_tr], y[i_tr]).score(pixels[i_te], y[i_te])
    assert feat_acc > pixel_acc, (feat_acc, pixel_acc)
    assert feat_acc > 0.96
