"""The options mechanism (featurebank.options): declared constraints, one error type naming the
parameter, and command-line flags generated from the dataclasses with the flag in messages."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from featurebank.errors import FeaturebankError, OptionError
from featurebank.options import Interval, Items, Options, check_options, option, param_docs


@dataclasses.dataclass(frozen=True)
class _Knobs:
    """Knobs of a test.

    Parameters
    ----------
    size : int
        How many. Second sentence.
    ratio, other : float
        A fraction.
    mode : {'a', 'b'}
        ``a`` or ``b``.
    flag : bool
        A switch.

    Notes
    -----
    Not a parameter.
    """

    size: int = option(3, Interval(int, 1, None))
    ratio: float = option(0.5, Interval(float, 0, 1, "neither"))
    mode: str = option("a", Options(("a", "b")))
    flag: bool = option(False, bool)
    limit: int | None = option(None, None, Interval(int, 0, None), help="most of them")
    shape: tuple = option((1, 2), Items(Interval(int, 1, None), 2))

    def __post_init__(self) -> None:
        check_options(self)


@pytest.mark.parametrize("changes, message", [
    ({"size": 0}, "size must be an int >= 1, got 0"),
    ({"size": 2.0}, "size must be an int >= 1, got 2.0"),
    ({"size": True}, "size must be an int >= 1, got True"),
    ({"ratio": 1}, "ratio must be a float in (0, 1), got 1"),
    ({"mode": "c"}, "mode must be one of ('a', 'b'), got 'c'"),
    ({"flag": 1}, "flag must be a bool, got 1"),
    ({"limit": -1}, "limit must be an int >= 0 or None, got -1"),
    ({"shape": (1, 0)}, "shape must be 2 values, each an int >= 1, got (1, 0)"),
])
def test_a_bad_value_names_its_parameter(changes, message):
    with pytest.raises(OptionError) as err:
        _Knobs(**changes)
    assert str(err.value) == message
    assert err.value.parameter == next(iter(changes)) and err.value.owner == "_Knobs"
    assert isinstance(err.value, ValueError) and isinstance(err.value, FeaturebankError)


def test_good_values_pass():
    assert _Knobs(size=2, ratio=1e-9, mode="b", flag=True, limit=0, shape=[3, 4]).limit == 0


def test_numpydoc_entries_are_read_per_field():
    docs = param_docs(_Knobs)
    assert docs == {"size": "How many. Second sentence.", "ratio": "A fraction.",
                    "other": "A fraction.", "mode": "``a`` or ``b``.", "flag": "A switch."}


def test_every_options_class_checks_its_fields_as_option_errors():
    """The options dataclasses of every stage raise OptionError naming the field (the five
    styles and two exception types of before are gone)."""
    from featurebank.extractor import EmbedRun
    from featurebank.finetune import FinetuneOptions
    from featurebank.service import ServiceConfig
    from featurebank.spec import FeatureOptions, Preprocessing

    cases = [(FeatureOptions, {"pool": "median"}, "pool"),
             (FeatureOptions, {"input_size": 4}, "input_size"),
             (Preprocessing, {"interpolation": "cubic"}, "preprocessing.interpolation"),
             (EmbedRun, {"workers": 0}, "workers"), (EmbedRun, {"device": "tpu"}, "device"),
             (FinetuneOptions, {"val_size": 1.0}, "val_size"),
             (ServiceConfig, {"max_wait_ms": -1}, "max_wait_ms")]
    for cls, changes, name in cases:
        with pytest.raises(OptionError) as err:
            cls(**changes)
        assert err.value.parameter == name and str(err.value).startswith(name + " must be")


def test_library_messages_name_parameters_not_flags():
    """EmbedRun named CLI flags ('--batch-size') inside the library; now it names the
    parameter, and only the command line says the flag."""
    from featurebank.extractor import EmbedRun

    with pytest.raises(OptionError, match=r"^batch_size must be an int >= 1, got 0$"):
        EmbedRun(batch_size=0)


def test_generated_flags_carry_defaults_choices_and_help():
    from featurebank.cli.flags import add_option_flags, flag_names, options_from_args

    parser = argparse.ArgumentParser()
    add_option_flags(parser, _Knobs, flags={"limit": "--at-most"})
    by_dest = {a.dest: a for a in parser._actions}
    assert by_dest["mode"].choices == ("a", "b") and by_dest["mode"].default == "a"
    assert by_dest["size"].type is int and "(default: 3)" in by_dest["size"].help
    assert by_dest["size"].help.startswith("how many")  # first sentence, argparse's case
    assert by_dest["limit"].option_strings == ["--at-most"] and by_dest["limit"].help == "most of them"
    args = parser.parse_args(["--size", "5", "--flag", "--at-most", "7", "--ratio", "0.25"])
    assert flag_names(args)["limit"] == "--at-most"
    assert options_from_args(_Knobs, args) == _Knobs(size=5, flag=True, limit=7, ratio=0.25)


def test_the_command_line_prints_its_flag_for_a_bad_option(capsys):
    from featurebank.cli import main

    assert main(["embed", "photos", "--store", "s.h5", "--batch-size", "0"]) == 1
    assert "featurebank embed: error: --batch-size must be an int >= 1, got 0" in capsys.readouterr().err
    assert main(["serve", "--max-queue", "4", "--max-batch-size", "8"]) == 1
    assert ("--max-queue (4) must be >= --max-batch-size (8)" in capsys.readouterr().err)


def test_defaults_have_one_source():
    """The service's defaults live in ServiceConfig only; the batcher and serve's flags take
    them from there."""
    import inspect

    from featurebank.cli import build_parser
    from featurebank.service import ServiceConfig
    from featurebank.service.batcher import DynamicBatcher

    config = ServiceConfig()
    params = inspect.signature(DynamicBatcher).parameters
    assert params["max_batch_size"].default == config.max_batch_size
    assert params["max_queue_images"].default == config.max_queue_images
    args = build_parser().parse_args(["serve"])
    assert args.max_batch_size == config.max_batch_size and args.max_queue_images == config.max_queue_images
    assert int(args.max_request_mb * 2**20) == config.max_request_bytes


def test_extractor_checks_its_run_arguments_at_the_boundary():
    """Extractor's own arguments are checked when it is made (no session, no file), with the
    same error type, before anything is loaded."""
    from featurebank.extractor import Extractor

    for changes, name in (({"device": "tpu"}, "device"), ({"batch_size": 0}, "batch_size"),
                          ({"threads": 0}, "threads")):
        with pytest.raises(OptionError) as err:
            Extractor("no_such_model", **changes)
        assert err.value.parameter == name and err.value.owner == "Extractor"


def test_a_parameter_keeps_its_name_when_the_flag_belongs_to_another_options_class():
    """embed has --batch-size (EmbedRun); an OptionError about another class's batch_size (one a
    stage builds internally) must not be printed as that flag."""
    from featurebank.cli import build_parser
    from featurebank.cli.flags import flag_names

    args = build_parser().parse_args(["embed", "photos", "--store", "s.h5"])
    assert flag_names(args, "EmbedRun")["batch_size"] == "--batch-size"
    assert "batch_size" not in flag_names(args, "FinetuneOptions")
    assert flag_names(args, "FeatureOptions")["normalize"] == "--l2"
    err = OptionError("batch_size", "must be an int >= 1, got 0", owner="FinetuneOptions")
    assert err.with_names(flag_names(args, err.owner)) == str(err)


# -- every field of every options dataclass and estimator (issue 31, item 1) -----------------

#: The light modules that declare options dataclasses (a test below finds every `= option(`).
OPTION_MODULES = ("featurebank.spec", "featurebank.extractor._options",
                  "featurebank.extractor.sources._options", "featurebank.finetune._options",
                  "featurebank.service.config", "featurebank.classical._options",
                  "featurebank.predict", "featurebank.compare._options")
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
    for path in REPO.glob("**/*.py"):
        if any(part.startswith(".") for part in path.relative_to(REPO).parts) or \
                path.parts[len(REPO.parts)] in ("tests", "benchmarks", "tools"):
            continue
        if "= option(" in path.read_text():
            declaring.add(path.relative_to(REPO).as_posix())
    walked = {"featurebank/spec.py", "extractor/_options.py", "extractor/sources/_options.py",
              "finetune/_options.py", "featurebank/service/config.py", "classical/_options.py",
              "featurebank/predict.py", "featurebank/compare/_options.py"}
    assert declaring == walked
    names = {cls.__name__ for cls in _options_classes()}
    assert {"FeatureOptions", "Preprocessing", "EmbedRun", "SourceOptions", "FinetuneOptions",
            "ServiceConfig", "TrainOptions", "PredictOptions", "CompareOptions"} <= names, names


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
