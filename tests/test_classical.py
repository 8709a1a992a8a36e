"""classical: probes, the scikit-learn transformer, saved models and spec checks on real digits."""

from __future__ import annotations

import os
import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer
from sklearn.utils.estimator_checks import (
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    parametrize_with_checks,
)

from featurebank import classical
from featurebank.classical import EmbeddingTransformer, LinearProbe, TrainedClassifier, load_trained
from featurebank.classical._probe import DEFAULT_CS
from featurebank.datasets import load_digits_images
from featurebank.extractor import FeatureStore

LAYERS = ("blocks.13", "head")


@pytest.fixture(scope="module")
def digits_split():
    """10 real digits per class to train on and 10 others per class to test on."""
    X, y = load_digits_images()
    tr = classical.k_shot_indices(y, 10, random_state=0)
    rest = np.setdiff1d(np.arange(len(y)), tr)
    te = rest[classical.k_shot_indices(y[rest], 10, random_state=1)]
    return X[tr], y[tr], X[te], y[te]


@pytest.fixture(scope="module")
def digit_features(model_cache, digits_split):
    Xtr, ytr, Xte, yte = digits_split
    tf = EmbeddingTransformer(layers=LAYERS).fit(Xtr)
    return tf, tf.transform(list(Xtr)), tf.transform(list(Xte))


def _pixels(images):
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((28, 28), Image.BILINEAR), np.float32)
                     .ravel() / 255 for im in images])


@pytest.mark.slow
def test_probe_on_digits_against_raw_pixels(digits_split, digit_features):
    """10 digits per class: frozen features are far above chance, but 8x8 scans blown up to
    224 px are a poor match for ImageNet features; raw pixels win here (measured 0.70 vs 0.93),
    which the README reports. Fashion-MNIST is where transfer pays (benchmarks/fashion_mnist.py)."""
    Xtr, ytr, Xte, yte = digits_split
    _, Ftr, Fte = digit_features
    features = LinearProbe().fit(Ftr, ytr).score(Fte, yte)
    pixels = LinearProbe().fit(_pixels(Xtr), ytr).score(_pixels(Xte), yte)
    assert features >= 0.6, features
    assert pixels >= 0.85, pixels


def test_transformer_output_and_names(digit_features):
    tf, Ftr, _ = digit_features
    assert Ftr.shape == (100, 192 + 1280) and Ftr.dtype == np.float32
    names = tf.get_feature_names_out()
    assert len(names) == Ftr.shape[1] and names[0] == "blocks.13_0" and names[-1] == "head_1279"
    assert [s.layer for s in tf.specs_] == list(LAYERS)


@pytest.mark.slow
def test_grid_search_embeds_each_image_once(model_cache, digits_split, tmp_path):
    Xtr, ytr, _, _ = digits_split
    images = list(Xtr[::2])  # 50 images, 5 per class
    pipe = make_pipeline(EmbeddingTransformer(layers=("head",), store=tmp_path / "cache.h5"),
                         LogisticRegression(max_iter=500))
    search = GridSearchCV(pipe, {"logisticregression__C": [0.1, 1.0, 10.0]}, cv=3).fit(images, ytr[::2])
    # 3 folds x 3 Cs + the refit transform every image many times: the store holds each once
    with FeatureStore(tmp_path / "cache.h5") as store:
        (fs,) = store.feature_sets()
        assert fs.rows == len(images)
    assert search.best_score_ > 0.5
    # a fresh transformer (empty memory cache) finds them in the store: nothing is recomputed
    again = EmbeddingTransformer(layers=("head",), store=tmp_path / "cache.h5").fit(images)
    np.testing.assert_allclose(again.transform(images),
                               search.best_estimator_[0].transform(images), rtol=1e-6)
    assert again.n_embedded_ == 0


def test_save_load_round_trip_and_spec_mismatch(tmp_path, digits_split, digit_features):
    _, ytr, _, _ = digits_split
    tf, Ftr, Fte = digit_features
    head = slice(192, None)
    probe = LinearProbe().fit(Ftr[:, head], ytr)
    spec_head, spec_b13 = tf.specs_[1], tf.specs_[0]
    model = TrainedClassifier(probe, [spec_head], [str(c) for c in probe.classes_], {"k"}, None, {"C": probe.C_})
    loaded = load_trained(model.save(tmp_path / "m.joblib"))
    assert loaded.fingerprints == [spec_head.fingerprint()]
    assert loaded.specs[0].to_dict() == spec_head.to_dict()
    assert loaded.classes == [str(c) for c in range(10)]
    np.testing.assert_array_equal(loaded.predict(Fte[:, head], [spec_head]), probe.predict(Fte[:, head]))
    with pytest.raises(classical.SpecMismatchError) as err:
        loaded.predict(Fte[:, :192], [spec_b13])
    msg = str(err.value)
    assert spec_head.fingerprint() in msg and spec_b13.fingerprint() in msg and "blocks.13" in msg


def test_load_trained_rejects_other_files(tmp_path):
    from featurebank.errors import FeaturebankError

    bad = tmp_path / "x.joblib"
    bad.write_bytes(b"not a model")
    with pytest.raises(FeaturebankError, match="not a featurebank classifier"):
        load_trained(bad)
    with pytest.raises(FeaturebankError, match="does not exist"):
        load_trained(tmp_path / "missing.joblib")


def test_old_names_still_work_and_warn():
    """TrainedModel and load_model (issue 31: "model" means the network) are the new objects,
    each look-up with a DeprecationWarning naming the new name."""
    import featurebank

    with pytest.warns(DeprecationWarning, match="use featurebank.classical.TrainedClassifier"):
        assert classical.TrainedModel is TrainedClassifier
    with pytest.warns(DeprecationWarning, match="use featurebank.classical.load_trained"):
        from featurebank.classical import load_model
    assert load_model is load_trained
    with pytest.warns(DeprecationWarning, match="use featurebank.load_trained"):
        assert featurebank.load_model is load_trained
    assert "TrainedModel" not in dir(classical) and "TrainedModel" not in classical.__all__


@pytest.mark.parametrize("classifier", ["logreg", "linear-svm", "rbf-svm"])
def test_probe_classifiers_pick_C_on_validation(digit_features, digits_split, classifier):
    _, ytr, _, yte = digits_split
    _, Ftr, Fte = digit_features
    probe = LinearProbe(classifier=classifier).fit(Ftr, ytr)
    assert set(probe.val_scores_) == set(DEFAULT_CS[classifier])
    assert probe.C_ in probe.val_scores_
    proba = probe.predict_proba(Fte)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    agree = np.mean(probe.classes_[proba.argmax(axis=1)] == probe.predict(Fte))
    # SVC predicts by one-vs-one votes, its scores are one-vs-rest: they rarely disagree
    assert agree >= (0.95 if classifier == "rbf-svm" else 1.0), agree
    # 100 training images in 1472 dimensions: the RBF kernel is the weakest here (measured 0.46)
    assert probe.score(Fte, yte) > (0.35 if classifier == "rbf-svm" else 0.6)


def test_k_shot_and_cross_validation(digit_features, digits_split):
    _, ytr, _, _ = digits_split
    _, Ftr, _ = digit_features
    idx = classical.k_shot_indices(ytr, 3)
    assert len(idx) == 30 and set(np.bincount(ytr[idx])) == {3}
    scores = classical.cross_validate_probe(LinearProbe(Cs=[1.0]), Ftr, ytr, folds=5)
    assert scores.shape == (5,) and scores.mean() > 0.6


@pytest.mark.slow
def test_probe_l2_normalize_and_cv_choice(digit_features, digits_split):
    """``cv=5`` scores each C by 5-fold CV on all 100 digits (checked against scikit-learn's own
    pipeline); ``normalize=True`` makes predictions blind to each image's feature scale."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.preprocessing import Normalizer, StandardScaler

    _, ytr, _, yte = digits_split
    _, Ftr, Fte = digit_features
    probe = LinearProbe(normalize=True, cv=5).fit(Ftr, ytr)
    assert set(probe.val_scores_) == set(DEFAULT_CS["logreg"])
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    for C in (0.01, 1.0):
        ref = make_pipeline(Normalizer(), StandardScaler(), LogisticRegression(C=C, max_iter=1000))
        assert probe.val_scores_[C] == pytest.approx(cross_val_score(ref, Ftr, ytr, cv=folds).mean())
    assert probe.val_scores_[probe.C_] == max(probe.val_scores_.values())
    np.testing.assert_allclose(np.linalg.norm(probe.pipeline_[0].transform(Fte), axis=1), 1.0,
                               rtol=1e-5)
    scales = np.random.default_rng(0).uniform(0.2, 5.0, size=(len(Fte), 1)).astype(np.float32)
    np.testing.assert_array_equal(probe.predict(Fte * scales), probe.predict(Fte))
    assert probe.score(Fte, yte) > 0.6
    # 3 images per class: the folds are capped at 3, every C is still cross-validated
    few = classical.k_shot_indices(ytr, 3)
    assert len(LinearProbe(cv=5).fit(Ftr[few], ytr[few]).val_scores_) == len(DEFAULT_CS["logreg"])
    assert clone(probe).get_params()["normalize"] is True
    with pytest.raises(ValueError, match="normalize"):
        LinearProbe(normalize="l1").fit(Ftr, ytr)


def test_probe_normalize_is_a_bool_and_its_old_values_still_work(digit_features, digits_split,
                                                                 tmp_path):
    """One word, one meaning (issue 31): ``normalize`` is the L2 switch of a FeatureSpec and of
    the probe. The probe's old ``'l2'`` warns and gives the same classifier; a probe pickled
    with ``'l2'`` or ``None`` (featurebank 0.1) loads and predicts as before."""
    import joblib

    _, ytr, _, _ = digits_split
    _, Ftr, Fte = digit_features
    new = LinearProbe(normalize=True, Cs=[1.0]).fit(Ftr, ytr)
    with pytest.warns(FutureWarning, match="normalize=True"):
        old = LinearProbe(normalize="l2", Cs=[1.0]).fit(Ftr, ytr)
    np.testing.assert_array_equal(old.predict_proba(Fte), new.predict_proba(Fte))
    assert isinstance(old.pipeline_[0], Normalizer) and isinstance(new.pipeline_[0], Normalizer)
    plain = LinearProbe(Cs=[1.0]).fit(Ftr, ytr)
    assert not isinstance(plain.pipeline_[0], Normalizer)
    for fitted, value in ((new, "l2"), (plain, None)):  # as 0.1 pickled them
        fitted.normalize = value
        joblib.dump(fitted, tmp_path / "p.joblib")
        loaded = joblib.load(tmp_path / "p.joblib")
        np.testing.assert_array_equal(loaded.predict(Fte), fitted.predict(Fte))
        with warnings.catch_warnings():  # 'l2' warns (above); None is the old default
            warnings.simplefilter("ignore", FutureWarning)
            refit = clone(loaded).fit(Ftr, ytr)
        assert isinstance(refit.pipeline_[0], Normalizer) == (value == "l2")


@parametrize_with_checks([LinearProbe(Cs=[0.1, 1.0], max_iter=200),
                          LinearProbe(Cs=[0.1, 1.0], max_iter=200, cv=3, normalize=True)])
def test_linear_probe_estimator_checks(estimator, check):
    check(estimator)


def test_embedding_transformer_estimator_contract(tmp_path):
    """Checks that apply to a transformer of images (the array-input checks do not)."""
    tf = EmbeddingTransformer(layers=["head"], store=tmp_path / "s.h5")
    check_no_attributes_set_in_init("EmbeddingTransformer", tf)
    check_parameters_default_constructible("EmbeddingTransformer", tf)
    c = clone(tf)
    assert c.get_params() == tf.get_params() and c is not tf
    fitted = pickle.loads(pickle.dumps(EmbeddingTransformer().fit(None)))
    assert fitted.fingerprints_ == EmbeddingTransformer().fit(None).fingerprints_


@pytest.mark.slow
def test_parallel_grid_search_shares_the_store_and_embeds_each_image_once(model_cache, digits_split,
                                                                            tmp_path):
    """Two joblib worker processes share the store: each image is embedded once in all, counted
    through the store's own commit log (rows offered per commit), never a StoreLockedError."""
    Xtr, ytr, _, _ = digits_split
    images, y = list(Xtr[::2]), ytr[::2]  # 50 images, 5 per class
    store = tmp_path / "cache.h5"
    pipe = make_pipeline(EmbeddingTransformer(layers=("blocks.3",), store=store, batch_size=8),
                         LogisticRegression(max_iter=300))
    search = GridSearchCV(pipe, {"logisticregression__C": [0.1, 1.0]}, cv=2, n_jobs=2,
                          error_score="raise").fit(images, y)
    log = FeatureStore(store).commit_log()
    assert int(log["rows_offered"].sum()) == len(images)  # computed once across all processes
    assert int(log["rows_written"].sum()) == len(images)
    assert set(log["pids"].tolist()) - {os.getpid()}  # the workers did write (not only the refit)
    assert FeatureStore(store).feature_sets()[0].rows == len(images)
    assert search.best_score_ > 0.3


def test_without_a_store_the_cache_is_bounded(model_cache, digits_split):
    Xtr, _, _, _ = digits_split
    tf = EmbeddingTransformer(layers=("blocks.3",), cache_size=7).fit(None)
    first = tf.transform(list(Xtr[:20]))
    assert len(tf._memory) == 7 and tf.n_embedded_ == 20
    np.testing.assert_allclose(tf.transform(list(Xtr[13:20])), first[13:20], rtol=1e-5)
    assert tf.n_embedded_ == 20  # the 7 most recent came from memory


def test_sweep_plot_bars_by_cost_and_accuracy_axis_from_zero(tmp_path, monkeypatch):
    """Rows in store (hash) order: the plot puts them by FLOPs so the cost line only rises, and
    its accuracy axis starts at 0 % (not just below the worst bar)."""
    from matplotlib.figure import Figure

    from featurebank.classical._report import plot_sweep

    seen = {}
    real_savefig = Figure.savefig

    def spy(fig, path, **kw):
        ax = fig.axes[0]
        seen["names"] = [t.get_text() for t in ax.get_xticklabels()]
        seen["ylim"] = ax.get_ylim()
        seen["cost"] = list(fig.axes[1].lines[0].get_ydata())
        return real_savefig(fig, path, **kw)

    monkeypatch.setattr(Figure, "savefig", spy)
    rows = [{"layer": "head", "accuracy": 0.95, "flops_share": 1.0},
            {"layer": "blocks.3", "accuracy": 0.90, "flops_share": 0.2},
            {"layer": "blocks.13+head", "accuracy": 0.96, "flops_share": 1.0},
            {"layer": "blocks.13", "accuracy": 0.93, "flops_share": 0.8}]
    plot_sweep(rows, tmp_path / "sweep.png")
    assert seen["names"] == ["blocks.3", "blocks.13", "head", "blocks.13+head"]
    assert seen["cost"] == sorted(seen["cost"])
    assert seen["ylim"] == (0.0, 100.0)
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_fewshot_curve_features_against_raw_pixels(tmp_path):
    """fewshot_curve (public, untested until issue 31): one point per k for the features and
    for raw pixels re-read from the images; more labels help; the PNG is written."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from featurebank.classical import LabelledFeatures, fewshot_curve

    digits = load_digits()
    X, y = digits.data.astype(np.float32), digits.target.astype(str)
    paths = []
    for i, image in enumerate(digits.images[:300]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray((image * 16).clip(0, 255).astype(np.uint8)).save(paths[-1])
    keys = np.array([str(i) for i in range(300)])

    def part(rows):
        return LabelledFeatures(X[rows], y[rows], keys[rows],
                                np.array([str(p) for p in paths])[rows], [])

    train_rows, test_rows = np.arange(200), np.arange(200, 300)
    curves = fewshot_curve(part(train_rows), part(test_rows), shots=(1, 10), pixels=True,
                           report_path=tmp_path / "fewshot.png")
    assert set(curves) == {"features", "raw pixels"}
    assert [k for k, _ in curves["features"]] == [1, 10] == [k for k, _ in curves["raw pixels"]]
    (_, one), (_, ten) = curves["features"]
    assert 0.1 < one < ten and ten > 0.7  # 10 classes: chance is 0.1
    assert all(0.1 < acc <= 1 for _, acc in curves["raw pixels"])
    assert (tmp_path / "fewshot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(fewshot_curve(part(train_rows), part(test_rows), shots=(5,), pixels=False)) == {
        "features"}
