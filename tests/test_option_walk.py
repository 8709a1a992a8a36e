"""Every option is checked, the one way (issue 31): a walk over every field of every options
dataclass and estimator with invalid values, as scikit-learn's ``check_param_validation``
does; one unknown-keyword check; the hand checks of before as constraints; adopt's flags from
``Preprocessing``; one ``max_pixels``; library messages that name parameters."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from featurebank.errors import OptionError
from featurebank.options import Interval, Options

# -- every field of every options dataclass and estimator (issue 31, item 1) -----------------

#: The light modules that declare options dataclasses (a test below finds every `= option(`).
OPTION_MODULES = ("featurebank.spec", "featurebank.extractor._options",
                  "featurebank.extractor.sources._options", "featurebank.finetune._options",
                  "featurebank.service.config", "featurebank.classical._options",
                  "featurebank.predict", "featurebank.demo", "featurebank.deploy._options",
                  "featurebank.extractor.search._options", "featurebank.classical.audit._options",
                  "featurebank.compare._options")
#: Required arguments of classes that have some.
def _required() -> dict:
    from featurebank.spec import ModelSpec

    model = {"model": "m", "weights_sha256": "0" * 64}
    return {"ModelSpec": model, "FeatureSpec": {"model": ModelSpec(**model), "layer": "head"}}
#: Fields checked under a prefix (nested options).
PREFIX = {"Preprocessing": "preprocessing.", "ModelSpec": "model."}


class _BadType:
    """A value no constraint but "any" accepts (scikit-learn's check_param_validation idea)."""

    def __repr__(self) -> str:
        return "<bad>"


def _options_classes() -> list[type]:
    import importlib

    from featurebank.options import option_fields

    found = []
    for name in OPTION_MODULES:
        module = importlib.import_module(name)
        found += [obj for obj in vars(module).values()
                  if isinstance(obj, type) and dataclasses.is_dataclass(obj)
                  and obj.__module__ == name and option_fields(obj)]
    return found


def _out_of_range(constraints) -> object | None:
    """A value of the right type that no constraint accepts, when one is easy to name."""
    for c in constraints:
        if isinstance(c, Interval) and c.left is not None:
            value = c.type(c.left - 1)
            if not any(_accepted(k, value) for k in constraints):
                return value
        if isinstance(c, Options) and isinstance(c.choices[0], str):
            return "no-such-choice"
    return None


def _accepted(constraint, value) -> bool:
    from featurebank.options import _accepts

    return _accepts(constraint, value)


def test_every_option_module_is_walked():
    """The walk below covers every module that declares options (a new one must be added)."""
    from benchmarks.harness.faults import REPO

    declaring = set()
    # the package's own folders only: a wheel build leaves copies under build/ (.ci/run builds
    # one before the tests), and tests, benchmarks and tools are not installed
    sources = ("featurebank", "export", "extractor", "classical", "finetune")
    for path in (p for folder in sources for p in (REPO / folder).glob("**/*.py")):
        if "= option(" in path.read_text():
            declaring.add(path.relative_to(REPO).as_posix())
    walked = {"featurebank/spec.py", "extractor/_options.py", "extractor/sources/_options.py",
              "finetune/_options.py", "featurebank/service/config.py", "classical/_options.py",
              "featurebank/predict.py", "featurebank/demo.py", "featurebank/deploy/_options.py",
              "extractor/search/_options.py", "classical/audit/_options.py",
              "featurebank/compare/_options.py"}
    assert declaring == walked
    names = {cls.__name__ for cls in _options_classes()}
    assert {"FeatureOptions", "Preprocessing", "EmbedRun", "SourceOptions", "FinetuneOptions",
            "ServiceConfig", "TrainOptions", "PredictOptions", "DemoOptions",
            "DeployOptions", "SearchOptions", "AuditOptions", "CompareOptions"} <= names, names


def test_every_field_of_every_options_class_refuses_bad_values_by_name():
    from featurebank.options import constraints_of, option_fields

    checked, required = 0, _required()
    for cls in _options_classes():
        for f in option_fields(cls):
            constraints = constraints_of(f)
            if "any" in constraints:
                continue
            name = PREFIX.get(cls.__name__, "") + f.name
            for bad in (_BadType(), _out_of_range(constraints)):
                if bad is None:
                    continue
                with pytest.raises(OptionError) as err:
                    cls(**{**required.get(cls.__name__, {}), f.name: bad})
                assert err.value.parameter == name, (cls.__name__, f.name, str(err.value))
                assert str(err.value).startswith(f"{name} must be"), str(err.value)
                checked += 1
    assert checked > 60


def _estimators():
    from featurebank.classical import EmbeddingTransformer, LinearProbe

    return [LinearProbe(), EmbeddingTransformer()]


@pytest.mark.parametrize("estimator", _estimators(), ids=lambda e: type(e).__name__)
def test_every_estimator_parameter_is_validated_in_fit(estimator):
    """scikit-learn's shape: _parameter_constraints names every constructor parameter; a bad
    value passes __init__ and set_params (the estimator contract) and fails in fit, before any
    work, as an OptionError naming the parameter."""
    import numpy as np
    from sklearn.base import clone

    params = estimator.get_params(deep=False)
    assert set(estimator._parameter_constraints) == set(params)
    X, y = np.random.default_rng(0).normal(size=(20, 4)), np.arange(20) % 2
    for name, constraints in estimator._parameter_constraints.items():
        for bad in (_BadType(), _out_of_range(constraints)):
            if bad is None:
                continue
            broken = clone(estimator).set_params(**{name: bad})
            with pytest.raises(OptionError) as err:
                broken.fit(X, y)
            assert err.value.parameter == name and err.value.owner == type(estimator).__name__
            assert str(err.value).startswith(f"{name} must be"), str(err.value)


def test_one_unknown_keyword_check_names_every_unknown_name():
    from featurebank.extractor import embed_collection
    from featurebank.finetune import finetune
    from featurebank.options import check_names
    from featurebank.spec import Preprocessing, feature_options

    with pytest.raises(OptionError, match=r"of f: unknown option\(s\) \['x', 'y'\]; known: \['a'"):
        check_names("f", ["a", "y", "x"], ["a", "b"])
    calls = [lambda: feature_options(None, pools="avg"),
             lambda: Preprocessing.from_dict({"input_size": (224, 224), "crop": 1}),
             lambda: embed_collection(["nowhere"], "s.h5", batchsize=3),
             lambda: finetune("nowhere", output="t.onnx", epoch=3)]
    for call, owner in zip(calls, ("feature_options", "Preprocessing", "embed_collection",
                                   "finetune"), strict=True):
        with pytest.raises(OptionError, match="unknown option") as err:
            call()
        assert err.value.owner == owner


def test_classical_options_are_checked_where_they_are_used():
    """train's holdout and shots had no check at all; evaluate's `unseen` was a plain error."""
    from featurebank.classical import TrainOptions, evaluate, sweep, train

    for kwargs, name in (({"holdout": 1.0}, "holdout"), ({"shots": 0}, "shots"),
                         ({"classifier": "forest"}, "classifier")):
        with pytest.raises(OptionError) as err:
            train("no-store.h5", **kwargs)
        assert err.value.parameter == name and err.value.owner == "TrainOptions"
    with pytest.raises(OptionError, match="^holdout must be a float in"):
        sweep("no-store.h5", holdout=0.0)
    with pytest.raises(OptionError, match="^unseen must be one of"):
        evaluate(None, "no-store.h5", unseen="skip")
    assert TrainOptions(layers=["a", "b"]).layers == ("a", "b")


def test_adopt_flags_are_generated_from_preprocessing_and_unstated_by_default():
    """Every Preprocessing field a user may state is a flag of adopt (and of nothing else by
    hand); unstated means None (the file or the graph decides; flags win); README's --resize
    keeps working beside --resize-size."""
    from featurebank.cli import build_parser
    from featurebank.cli.export_cmds import convention_flags
    from featurebank.options import option_fields
    from featurebank.spec import Preprocessing

    parser = build_parser()
    bare = parser.parse_args(["adopt", "m.onnx", "-o", "a.onnx"])
    fields = [f.name for f in option_fields(Preprocessing)]
    assert all(getattr(bare, name) is None for name in fields) and convention_flags(bare) == {}
    args = parser.parse_args(["adopt", "m.onnx", "-o", "a.onnx", "--resize", "256", "--mean",
                              "0.485,0.456,0.406", "--input-size", "224", "--no-class-token",
                              "--tensor-layout", "t=nhwc", "--prefix-tokens", "5",
                              "--pixel-range", "255", "--background", "0,0,0"])
    assert convention_flags(args) == {
        "resize_size": 256, "mean": (0.485, 0.456, 0.406), "input_size": "224",
        "class_token": False, "tensor_layouts": ["t=nhwc"], "prefix_tokens": 5,
        "pixel_range": 255, "background": (0, 0, 0)}
    assert parser.parse_args(["adopt", "m.onnx", "-o", "a.onnx", "--resize-size", "300"]
                             ).resize_size == 300
    with pytest.raises(SystemExit):
        parser.parse_args(["adopt", "m.onnx", "-o", "a.onnx", "--mean", "a,b,c"])


def test_former_hand_checks_are_constraints(tmp_path):
    """Single-field rules that were raised by hand (issue 31) are declared constraints now:
    the same OptionError naming the parameter, from the one mechanism."""
    from featurebank.extractor import FeatureStore
    from featurebank.extractor.sources import SourceOptions
    from featurebank.spec import Preprocessing

    with pytest.raises(OptionError, match=r"^label_column must be a non-empty string, got ' '"):
        SourceOptions(label_column=" ")
    with pytest.raises(OptionError, match=r"^preprocessing.tensor_layouts must be values, each a "
                                          r"pair \(a non-empty string, one of \('nchw', 'nhwc'\)\)"):
        Preprocessing(tensor_layouts={"t": "hwc"})
    assert Preprocessing(tensor_layouts={"b": "NHWC", "a": "nchw"}).tensor_layouts == (
        ("a", "nchw"), ("b", "nhwc"))
    with FeatureStore(tmp_path / "s.h5", mode="a") as store:
        with pytest.raises(OptionError, match=r"^dtype must be one of \('float16', 'float32'\)"):
            store.commit(dtype="float64")


def test_one_max_pixels_default_everywhere():
    """The decoder, the Extractor and the service refused images above two different sizes
    (100 MP, 50 MP); one constant now."""
    import inspect

    from featurebank.extractor import DEFAULT_MAX_PIXELS, Extractor, decode
    from featurebank.service import ServiceConfig
    from featurebank.spec import MAX_PIXELS

    assert DEFAULT_MAX_PIXELS == MAX_PIXELS == ServiceConfig().max_pixels
    assert inspect.signature(decode).parameters["max_pixels"].default == MAX_PIXELS
    assert inspect.signature(Extractor).parameters["max_pixels"].default == MAX_PIXELS


def test_source_messages_name_the_parameter_and_the_command_line_its_flag(tmp_path, capsys):
    """Library messages named CLI flags ('--split train selects rows ...'); now they name the
    parameter, and embed prints its own flag."""
    from featurebank.cli import main
    from featurebank.extractor import collect
    from featurebank.extractor.sources import SourceOptions

    (tmp_path / "photos").mkdir()
    with pytest.raises(OptionError, match=r"^split is 'train': it selects rows of list and "
                                          r"parquet files, but .*photos is a folder$"):
        collect([str(tmp_path / "photos")], sources=SourceOptions(split="train"))
    assert main(["embed", str(tmp_path / "photos"), "--store", str(tmp_path / "s.h5"),
                 "--split", "train"]) == 1
    assert "featurebank embed: error: --split is 'train': it selects rows" in \
        capsys.readouterr().err
    assert not (tmp_path / "s.h5").exists()


def test_adopt_takes_and_shows_the_unstated_values_from_one_table(capsys):
    """What adopt takes for an unstated convention and what its help says it takes come from
    one table, ``featurebank.spec.ADOPT_UNSTATED`` (issue 31: no third copy of the defaults)."""
    from onnx import TensorProto, helper, numpy_helper

    from featurebank.cli import main
    from featurebank.export import resolve_conventions
    from featurebank.spec import ADOPT_UNSTATED

    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 20, 24])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 20, 24])], [w])
    pre, _ = resolve_conventions(helper.make_model(graph), pixel_range=255, channel_order="bgr")
    assert (pre.mean, pre.std, pre.interpolation) == tuple(
        ADOPT_UNSTATED[k][0] for k in ("mean", "std", "interpolation"))
    assert pre.resize_size == 20 and pre.input_size == (20, 24)  # the input size: no crop
    with pytest.raises(SystemExit):
        main(["adopt", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for words in (w for _, w in ADOPT_UNSTATED.values()):
        assert f"(unstated: {words})" in shown


def test_audit_spells_neighbors_as_the_command_does(capsys):
    """One spelling on the command line: ``--neighbors`` (as ``featurebank neighbors`` and
    ``/v1/neighbors``); ``--neighbours`` still works. Errors name the first."""
    from featurebank.cli import build_parser, main

    parser = build_parser()
    assert parser.parse_args(["audit", "s.h5", "--neighbors", "7"]).neighbours == 7
    assert parser.parse_args(["audit", "s.h5", "--neighbours", "7"]).neighbours == 7
    assert main(["audit", "missing.h5", "--neighbors", "0"]) == 1
    assert "--neighbors must be an int in [1, 1000], got 0" in capsys.readouterr().err
