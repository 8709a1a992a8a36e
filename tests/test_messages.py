"""Library messages name parameters (``weights=FILE``, ``label_check=False``); the command line
prints them with the parsed command's own flags (issue 31, item 5; docs/CONTRACTS.md).

The scan reads every string the library builds (raised, logged, or kept in a variable first)
and refuses a ``--flag`` outside a quoted whole command ('featurebank ...', 'ray start ...',
pip install ...); the end-to-end checks run real failing commands through
``featurebank.cli.main`` and the same calls from Python."""

from __future__ import annotations

import ast
import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featurebank.errors import FeaturebankError, OptionError

REPO = Path(__file__).resolve().parents[1]
LIBRARY = ("export", "extractor", "classical", "finetune", "featurebank")
#: a whole command to run keeps its flags: in quotes starting with featurebank or ray start;
#: pip install and its one (quoted) argument
INSTRUCTION = re.compile(r"'(?:featurebank|ray start) [^']*'|\"(?:featurebank|ray start) [^\"]*\"|"
                         r"pip install (?:'[^']*'|\"[^\"]*\"|[^\s()]+)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
#: the allow-list: text for the command line's own help, not a message (``help=`` of an
#: ``option(...)``, shown by --help), and docstrings (documentation names the flags)
ALLOWED_KEYWORDS = {"help"}
_STRINGY = (ast.Constant, ast.JoinedStr, ast.BinOp, ast.FormattedValue, ast.IfExp)


def _text(node: ast.AST) -> str:
    """The text a string expression builds, nested f-strings and ``a if c else b`` included
    (both branches); other values as ``{}``."""
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else "{}"
    if isinstance(node, ast.JoinedStr):
        return "".join(_text(v) for v in node.values)
    if isinstance(node, ast.FormattedValue):
        return _text(node.value)
    if isinstance(node, ast.IfExp):
        return _text(node.body) + " " + _text(node.orelse)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _text(node.left) + _text(node.right)
    return "{}"


def _is_string(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.BinOp):
        return isinstance(node.op, ast.Add) and (_is_string(node.left) or _is_string(node.right))
    return isinstance(node, ast.JoinedStr)


def _skipped(tree: ast.AST) -> set[int]:
    """ids of the strings the allow-list keeps: docstrings (a bare string statement) and the
    values of ``help=``."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and _is_string(node.value):
            skip.add(id(node.value))
        if isinstance(node, ast.keyword) and node.arg in ALLOWED_KEYWORDS:
            skip.add(id(node.value))
    return skip


def flags_in_messages(root: Path) -> list[str]:
    """``path:line: --flag | text`` for each library string that names a command-line flag
    outside a quoted instruction; the whole string is read once, from its outermost node."""
    found = []
    for top in LIBRARY:
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root)
            if rel.parts[:2] == ("featurebank", "cli") or "__pycache__" in rel.parts:
                continue
            tree = ast.parse(path.read_text(), str(rel))
            skip, inner = _skipped(tree), set()
            for node in ast.walk(tree):
                if id(node) in inner or not _is_string(node):
                    continue
                inner.update(id(n) for n in ast.walk(node) if isinstance(n, _STRINGY))
                if id(node) in skip:
                    continue
                text = INSTRUCTION.sub("", _text(node))
                found += [f"{rel}:{node.lineno}: {m.group()} | {text[:100]!r}"
                          for m in FLAG.finditer(text)]
    return found


def test_no_library_message_names_a_command_line_flag():
    assert flags_in_messages(REPO) == []


def test_the_scan_finds_a_planted_flag_raised_logged_or_built_in_a_variable(tmp_path):
    """A copy of the library with flags planted three ways: each is found, while a quoted
    command, a docstring and a help text are not."""
    for top in LIBRARY:
        shutil.copytree(REPO / top, tmp_path / top,
                        ignore=shutil.ignore_patterns("__pycache__", "*.onnx", "*.pth", "*.npz"))
    assert flags_in_messages(tmp_path) == []
    target = tmp_path / "classical" / "audit" / "_exclusions.py"
    target.write_text(target.read_text() + '''

def _planted(p, log, n):
    """Docstrings may say --exclude FILE."""
    hint = f" (or --weights {p})" if n else ""
    log.warning("left out %d images (--exclude)", n)
    option(1, help="with --budget")
    raise FeaturebankError(f"{p}: no such file; pass --layer LAYER{hint} or run "
                           f"'featurebank audit {p} --report DIR' (pip install 'x[y]' --no-deps)")
''')
    found = flags_in_messages(tmp_path)
    assert [f.split(" | ")[0].split(": ")[1] for f in found] == ["--weights", "--exclude",
                                                                 "--layer", "--no-deps"]
    assert all(f.startswith("classical/audit/_exclusions.py:") for f in found)


def test_names_become_the_commands_flags_and_unknown_names_stay():
    """name=VALUE -> --flag VALUE; switches by their spelling; tuples comma-joined, lists one
    flag per item; a name the command lacks, or a switch value it has no spelling for, stays."""
    from featurebank.cli import build_parser
    from featurebank.cli.messages import render_error

    def shown(argv, message):
        return render_error(FeaturebankError(message), build_parser().parse_args(argv))

    assert shown(["audit", "s.h5"], "lower folds=N or pass label_check=False.") == (
        "lower --folds N or pass --no-label-check.")
    assert shown(["train", "s.h5", "-o", "c.joblib"],
                 "layers=[LAYER]; layers=['a', 'b'], baseline=False; folds=3") == (
        "--layer LAYER; --layer a --layer b, --no-baseline; folds=3")
    assert shown(["adopt", "m.onnx", "-o", "a.onnx"],
                 "state input_size=(H, W) and layout='nhwc' (x=1)") == (
        "state --input-size H,W and --layout nhwc (x=1)")
    quoted = "got Preprocessing(input_size=(8, 8), layout='nhwc'); Extractor(layers=['a'])"
    assert shown(["adopt", "m.onnx", "-o", "a.onnx"], quoted) == quoted  # a repr stays Python
    assert shown(["evaluate", "c.joblib", "s.h5"], "pass unseen='wrong', baseline=True") == (
        "pass --unseen-as-wrong, --baseline")
    # nested sub-command: store export's hand-declared --layer, registered for the store's name
    assert shown(["store", "export", "s.h5", "-o", "x.npz"], "layer_or_fingerprint='head'") == (
        "--layer head")
    err = OptionError("batch_size", "must be >= 1; use device='cpu'", owner="FinetuneOptions")
    assert render_error(err, build_parser().parse_args(["embed", "x", "--store", "s.h5"])) == (
        "batch_size must be >= 1; use --device cpu")  # embed's --batch-size is EmbedRun's


def _store(path, files, labels, layers=("pixels",)):
    """A store of the images' raw pixels as features, one feature set per name in ``layers``."""
    from featurebank.extractor.store import FeatureStore
    from featurebank.spec import FeatureSpec, ModelSpec, Preprocessing

    model = ModelSpec("digits-pixels", "0" * 64, Preprocessing((8, 8), 8), "test")
    keys = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    X = np.stack([np.asarray(Image.open(f).convert("L"), np.float32).ravel() for f in files])
    with FeatureStore(path, mode="a") as s:
        for layer in layers:
            s.add_rows(FeatureSpec(model, layer, "none"), keys, X, [str(f) for f in files],
                       labels, dtype="float32")
    return path


@pytest.fixture(scope="module")
def digits(digits_dir):
    files = sorted(digits_dir.glob("[01]/*.png"))
    return files, [f.parent.name for f in files]


def _cli_error(capsys, *argv) -> str:
    from featurebank.cli import main

    capsys.readouterr()
    assert main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"featurebank {argv[0]}: error: ") and "Traceback" not in err
    return err


def test_audit_folds_names_the_flags_on_the_command_line_and_parameters_in_python(
        tmp_path, capsys, digits):
    from featurebank.classical import AuditOptions, audit_stores

    files, labels = digits
    store = _store(tmp_path / "few.h5", files[:3] + files[-3:], labels[:3] + labels[-3:])
    with pytest.raises(OptionError, match=r"^folds is 5, but a class of training store .* has 3 "
                                          r"labelled images; lower it or pass label_check=False$"):
        audit_stores(store, options=AuditOptions(folds=5))
    err = _cli_error(capsys, "audit", store, "--folds", "5")
    assert err.endswith("--folds is 5, but a class of training store "
                        f"{store} has 3 labelled images; lower it or pass --no-label-check")


def test_train_on_two_feature_sets_names_layer_flag_or_layers_parameter(tmp_path, capsys, digits):
    from featurebank.classical import train

    files, labels = digits
    store = _store(tmp_path / "two.h5", files[:20], labels[:20], layers=("pixels", "again"))
    with pytest.raises(FeaturebankError, match=r"2 feature sets; choose one with layers=\[LAYER\] "
                                               r"\(a layer name or fingerprint\)"):
        train(store, baseline=False)
    err = _cli_error(capsys, "train", store, "-o", tmp_path / "c.joblib", "--no-baseline")
    assert "2 feature sets; choose one with --layer LAYER (a layer name or fingerprint)" in err
    assert not (tmp_path / "c.joblib").exists()


def test_a_missing_exclusions_file_is_named_as_a_file_not_a_flag(tmp_path, capsys, digits):
    from featurebank.classical import read_exclusions

    files, labels = digits
    store = _store(tmp_path / "s.h5", files[:20], labels[:20])
    missing = tmp_path / "nope.txt"
    said = (f"exclusions file {missing}: no such file ('featurebank audit --report DIR' writes "
            "DIR/exclude.txt)")
    with pytest.raises(FeaturebankError) as err:
        read_exclusions(missing)
    assert str(err.value) == said
    got = _cli_error(capsys, "train", store, "-o", tmp_path / "c.joblib", "--exclude", missing)
    assert got == f"featurebank train: error: {said}"


def test_adopt_names_pixel_range_and_input_size_as_flags_or_parameters(tmp_path, capsys):
    from featurebank.export import adopt
    from tests._onnx_graphs import uint8_nhwc

    src, out = uint8_nhwc(tmp_path / "u8.onnx"), tmp_path / "adopted.onnx"
    with pytest.raises(FeaturebankError, match=r"drop pixel_range=1 \(or state pixel_range=255\)"):
        adopt(src, out, channel_order="rgb", pixel_range=1)
    with pytest.raises(FeaturebankError, match=r"state input_size=N or input_size=\(H, W\)$"):
        adopt(src, out, channel_order="rgb")
    err = _cli_error(capsys, "adopt", src, "-o", out, "--channel-order", "rgb", "--pixel-range", 1)
    assert err.endswith("drop --pixel-range 1 (or state --pixel-range 255)")
    err = _cli_error(capsys, "adopt", src, "-o", out, "--channel-order", "rgb")
    assert err.endswith("state --input-size N or --input-size H,W")
    assert not out.exists()


def test_log_lines_of_the_library_are_printed_with_the_commands_flags():
    """A warning names ``device='cuda'``; the command's log format prints ``--device cuda``,
    and leaves other libraries' lines alone."""
    import logging

    from featurebank.cli import _LogFormat, build_parser
    from featurebank.cli.messages import render_for

    fmt = _LogFormat(render_for(build_parser().parse_args(["embed", "x", "--store", "s.h5"])))

    def line(name: str, message: str) -> str:
        return fmt.format(logging.LogRecord(name, logging.WARNING, __file__, 1, message, (), None))

    assert line("featurebank.extractor._extractor", "it is meant for device='cuda'") == (
        "warning: it is meant for --device cuda")
    assert line("onnxscript", "device='cuda'") == "warning (onnxscript): device='cuda'"
