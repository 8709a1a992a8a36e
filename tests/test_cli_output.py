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
    classifier = next(a for a in commands["predict"]._actions if a.dest == "classifier")
    assert classifier.help and ".joblib" in classifier.help and ".onnx" in classifier.help


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


@pytest.mark.parametrize("old, new, dest, value", [
    (["sweep", "s.h5", "--test-store", "t.h5"], ["sweep", "s.h5", "--test", "t.h5"], "test", "t.h5"),
    (["serve", "--classifier", "c.joblib"], ["serve", "--classifier-file", "c.joblib"],
     "classifier_file", "c.joblib"),
    (["demo", "--workdir", "w"], ["demo", "--work-dir", "w"], "work_dir", "w"),
    (["demo", "--train", "7"], ["demo", "--train-images", "7"], "train_images", 7),
])
def test_renamed_flags_still_work_with_a_one_line_warning(old, new, dest, value, capsys):
    """issue 31's vocabulary: the old spelling does what the new one does, warns on one line,
    and is not shown in --help."""
    parser = build_parser()
    by_old, by_new = parser.parse_args(old), parser.parse_args(new)
    assert getattr(by_old, dest) == getattr(by_new, dest) == value
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{old[-2]} is deprecated; use {new[-2]}" in err
    command = dict(_command_parsers(parser))[old[0]]
    assert old[-2] not in command.format_help().replace(new[-2], "")


def test_an_unexpected_exception_is_one_line_with_the_trace_kept(monkeypatch, capsys):
    """No traceback reaches a user: a bug inside a command ends in one line naming what failed
    and the file involved, and where the full trace was written; -v prints the trace too."""
    import re

    import featurebank.cli.store_cmds as store_cmds
    from featurebank.cli import main

    def broken(args):
        try:
            open("/no/such/folder/x.npz", "rb")
        except OSError as exc:
            raise RuntimeError("the exporter tripped") from exc

    monkeypatch.setattr(store_cmds, "run_info", broken)
    assert main(["store", "info", "x.h5"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("featurebank store: error: unexpected RuntimeError: the exporter tripped")
    assert "(file /no/such/folder/x.npz)" in err and "-v" in err
    where = re.search(r"full trace in (\S+)", err).group(1)
    with open(where) as f:
        trace = f.read()
    assert "Traceback" in trace and "FileNotFoundError" in trace and "def broken" not in trace
    assert "in broken" in trace
    import os

    os.unlink(where)
    assert main(["-v", "store", "info", "x.h5"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("featurebank store: error")
    os.unlink(re.search(r"full trace in (\S+)", err).group(1))
