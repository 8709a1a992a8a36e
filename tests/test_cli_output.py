"""What the command line prints besides results: exit statuses in every --help, progress as
plain lines when stderr is no terminal, one log format (issue 22, item 5)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from featurebank.cli import _LogFormat, build_parser
from featurebank.errors import OptionError
from featurebank.extractor._progress import ProgressLines, progress


def _command_parsers(parser, prefix=""):
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        for name, child in action.choices.items():
            yield f"{prefix}{name}", child
            yield from _command_parsers(child, f"{prefix}{name} ")


def test_every_command_documents_its_exit_statuses():
    commands = dict(_command_parsers(build_parser()))
    assert {"embed", "predict", "store info", "finetune", "serve"} <= set(commands)
    for name, parser in commands.items():
        text = " ".join(parser.format_help().split())  # wrapped at any width
        for code in ("0 success", "1 ", "2 usage error", "130 interrupted"):
            assert code in text, f"{name} --help does not say '{code}'"
    predict = " ".join(commands["predict"].format_help().split())
    assert "could not be read" in predict and "every other file" in predict
    model = next(a for a in commands["predict"]._actions if a.dest == "model")
    assert model.help and ".joblib" in model.help and ".onnx" in model.help


def test_progress_is_plain_lines_when_stderr_is_no_terminal(caplog):
    """Under pytest stderr is captured (no terminal): no tqdm bar, no carriage returns; a line
    every `every` items and one at the end."""
    bar = progress(1000, desc="embedding", every=250)
    assert isinstance(bar, ProgressLines)
    with caplog.at_level(logging.INFO, logger="featurebank.progress"):
        for _ in range(10):
            bar.update(100)
            bar.set_postfix(cached=3, failed=1, refresh=False)
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in lines] == [
        "embedding: 300/1000 img", "embedding: 500/1000 img", "embedding: 800/1000 img",
        "embedding: 1000/1000 img"]
    assert all(line.endswith("cached=3 failed=1") and "\r" not in line for line in lines)
    silent = progress(10, enabled=False)
    silent.update(10)
    silent.close()
    assert len(caplog.records) == 4


def test_one_log_format_for_every_command():
    fmt = _LogFormat()

    def record(name, level, msg):
        return logging.LogRecord(name, level, __file__, 1, msg, (), None)

    assert fmt.format(record("featurebank.finetune._train", logging.INFO, "epoch 1/8")) == "epoch 1/8"
    assert fmt.format(record("featurebank.extractor", logging.WARNING, "odd")) == "warning: odd"
    assert fmt.format(record("onnxscript", logging.WARNING, "x")) == "warning (onnxscript): x"
    assert fmt.format(record("featurebank.x", logging.DEBUG, "y")) == "debug (featurebank.x): y"
    assert fmt.format(record("uvicorn.error", logging.INFO, "z")) == "info (uvicorn): z"


def test_finetune_errors_name_the_flags_on_the_command_line_and_parameters_in_python(tmp_path):
    """The library's fine-tuning errors name its parameters (``from_layer``); the command
    prints them with its own flags (``--from``)."""
    from featurebank.finetune import finetune

    photos = tmp_path / "photos" / "a"
    photos.mkdir(parents=True)
    with pytest.raises(OptionError, match=r"^from_layer 'blocks\.99': cut at one of"):
        finetune(tmp_path / "photos", from_layer="blocks.99", output=tmp_path / "t.onnx")
    r = subprocess.run([sys.executable, "-m", "featurebank", "finetune", str(tmp_path / "photos"),
                        "--from", "blocks.99", "-o", str(tmp_path / "t.onnx")],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "error: --from 'blocks.99': cut at one of blocks.0 .. blocks.15" in r.stderr
    assert not (tmp_path / "t.onnx").exists()
