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
