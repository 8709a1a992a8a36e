"""README and docs/ hold what the repository holds: figures, examples, links, commands.

- README stays under 200 lines (the guide lives in docs/).
- Every figure in README's results table is a link to the JSON a benchmark wrote, and each number
  in the link's text is found in that JSON within the rounding shown. A link's title may name
  where: JSON pointers (RFC 6901), one per number, separated by ``;``, each optionally followed
  by `` *100`` (a scale; ``*-1`` flips a sign) or `` #len`` (the size of a list or object), e.g.
  ``[91.51 %](benchmarks/results/fashion_mnist_full.json "/configs/all5/accuracy *100")``
  (no ``|``: it would split the table's cell).
  Without a title any number of the JSON that rounds to the figure (at scale 1 or 100) will do.
- Every ```python block of README runs, in a fresh process, in a folder of real photos.
- Every relative link of README and docs/*.md names a file of the repository.
- Every ``featurebank COMMAND`` README shows is a command of the CLI.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAX_LINES = 200

# [text](target "title") in Markdown; the title is optional
LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)(?:\s+\"([^\"]*)\")?\)")
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def markdown_files() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def test_readme_fits_a_screenful_of_screens():
    lines = _readme().splitlines()
    assert len(lines) < MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


# -- the results table ---------------------------------------------------------------------------

def results_table(text: str) -> list[list[str]]:
    """Rows (cells as text) of the first Markdown table under a '## Results' heading."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("## Results")), None)
    assert start is not None, "README has no '## Results' section"
    rows: list[list[str]] = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):  # skip the |---| rule
                rows.append(cells)
        elif rows:
            break
    assert len(rows) > 1, "the results table is empty"
    return rows[1:]  # without the header


def numbers(text: str) -> list[tuple[float, int]]:
    """Each number in ``text`` with its count of decimals: '2,000' -> (2000.0, 0)."""
    out = []
    for m in NUMBER.finditer(text):
        s = m.group().replace(",", "")
        out.append((float(s), len(s.split(".")[1]) if "." in s else 0))
    return out


def resolve(doc, pointer: str):
    """The value a JSON pointer names ('/a/b/0'; '~1' is '/', '~0' is '~')."""
    value = doc
    for raw in pointer.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(value, list):
            value = value[int(part)]
        else:
            assert part in value, f"{pointer}: no key {part!r} (keys: {sorted(value)[:20]})"
            value = value[part]
    return value


def all_numbers(doc) -> list[float]:
    if isinstance(doc, dict):
        return [x for v in doc.values() for x in all_numbers(v)]
    if isinstance(doc, list):
        return [x for v in doc for x in all_numbers(v)] + [float(len(doc))]
    if isinstance(doc, bool) or not isinstance(doc, (int, float)):
        return []
    return [float(doc)]


def rounds_to(value: float, shown: float, decimals: int) -> bool:
    return abs(value - shown) <= 0.5 * 10.0 ** -decimals + 1e-9 * max(1.0, abs(shown))


def check_figure(text: str, target: str, title: str | None) -> list[str]:
    """Problems with one linked figure (empty when every number is in the JSON)."""
    path = REPO / target
    if not path.is_file():
        return [f"[{text}]({target}): no such file"]
    doc = json.loads(path.read_text())
    shown = numbers(text)
    if not shown:
        return [f"[{text}]({target}): no number in the link text"]
    if title is None:  # any number of the file, as is or as a percentage
        candidates = all_numbers(doc)
        return [f"[{text}]({target}): {value:g} is nowhere in the JSON"
                for value, dec in shown
                if not any(rounds_to(c * s, value, dec) for c in candidates for s in (1, 100))]
    specs = [s.strip() for s in title.split(";")]
    if len(specs) != len(shown):
        return [f"[{text}]({target} \"{title}\"): {len(shown)} numbers but {len(specs)} pointers"]
    problems = []
    for (value, dec), spec in zip(shown, specs, strict=True):
        pointer, transform = spec, ""
        m = re.fullmatch(r"(.*?)\s+(\*-?[\d.]+|#len)", spec)
        if m:
            pointer, transform = m.groups()
        found = resolve(doc, pointer)
        if transform == "#len":
            found = len(found)
        elif transform:
            found = found * float(transform[1:])
        if isinstance(found, bool) or not isinstance(found, (int, float)):
            problems.append(f"[{text}]({target}): {pointer} is {found!r}, not a number")
        elif not rounds_to(float(found), value, dec):
            problems.append(f"[{text}]({target}): shows {value:g}, the JSON has {found!r} "
                            f"at {pointer}")
    return problems


def test_results_table_figures_are_those_of_their_json():
    rows = results_table(_readme())
    problems, checked = [], 0
    for cells in rows:
        row = " | ".join(cells)
        figures = [m for cell in cells[1:] for m in LINK.finditer(cell)
                   if m.group(2).startswith("benchmarks/results/")]
        if not figures:
            # a row without a figure must say why (no GPU lent, a figure the lead fills, ...)
            assert "not measured" in row, f"results row with no linked figure: {row}"
            assert not NUMBER.search(cells[1]), f"unlinked figure in the results table: {row}"
            continue
        for m in figures:
            problems += check_figure(m.group(1), m.group(2), m.group(3))
            checked += 1
    assert not problems, "README figures that disagree with their JSON:\n" + "\n".join(problems)
    assert checked >= 10


def test_figure_check_catches_a_drifted_figure(tmp_path, monkeypatch):
    """The checker itself: a figure off by more than its rounding, or a wrong pointer, fails."""
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "r.json").write_text(json.dumps({"a": {"acc": 0.9151, "n": [1, 2, 3]},
                                                  "ratio": 0.91, "load": 13.2}))
    assert check_figure("91.51 %", "r.json", "/a/acc *100") == []
    assert check_figure("0.91x (load 13)", "r.json", "/ratio; /load") == []
    assert check_figure("3 runs", "r.json", "/a/n #len") == []
    assert check_figure("+0.9 points", "r.json", "/ratio *-1")  # sign flipped: -0.91
    assert check_figure("0.91x (load 13)", "r.json", None) == []
    assert check_figure("1.91x", "r.json", "/ratio")  # the old claim of issue 16
    assert check_figure("1.91x", "r.json", None)
    assert check_figure("91.6 %", "r.json", "/a/acc *100")
    assert check_figure("91.51 %", "r.json", "/a/acc")  # a missing scale
    assert check_figure("0.91x", "missing.json", None)
    with pytest.raises(AssertionError):
        check_figure("0.91x", "r.json", "/speedup")


# -- the Python examples -------------------------------------------------------------------------

def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, real_photos) -> Path:
    """photos/<label>/<n>.jpg: six crops of each of three real photos, as README's example reads."""
    from PIL import Image

    root = tmp_path_factory.mktemp("readme")
    for name in ("chelsea", "coffee", "rocket"):
        arr = real_photos[name]
        h, w = arr.shape[:2]
        (root / "photos" / name).mkdir(parents=True)
        for i in range(6):
            y, x = (i % 3) * h // 10, (i // 3) * w // 8
            crop = np.ascontiguousarray(arr[y:y + int(h * 0.7), x:x + int(w * 0.7)])
            Image.fromarray(crop).save(root / "photos" / name / f"{i}.jpg", quality=90)
    return root


def test_readme_has_one_python_example_on_public_imports():
    blocks = python_blocks(_readme())
    assert len(blocks) == 1, f"README should hold one Python example, it has {len(blocks)}"
    imports = re.findall(r"^\s*(?:from|import)\s+(featurebank[\w.]*)", blocks[0], flags=re.M)
    assert imports, "the example imports nothing from featurebank"
    private = [m for m in imports if any(p.startswith("_") for p in m.split("."))]
    assert not private, f"README imports private modules: {private}"


@pytest.mark.parametrize("index", range(len(python_blocks(_readme()))))
def test_readme_python_example_runs(index, photo_folder, lite0_onnx, model_cache, tmp_path):
    code = python_blocks(_readme())[index]
    workdir = tmp_path / "work"
    # the example reads photos/ from its working directory: a fresh copy for each run
    shutil.copytree(photo_folder / "photos", workdir / "photos")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path / "home"),
           "FEATUREBANK_CACHE": str(model_cache), "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg", "LANG": "C.UTF-8"}
    done = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"README example {index} failed:\n{done.stdout}\n{done.stderr}"
    assert (workdir / "photos.h5").is_file() or "photos.h5" not in code


def docs_python_blocks() -> list[tuple[str, str]]:
    return [(f"{doc.relative_to(REPO)}[{i}]", block)
            for doc in markdown_files() for i, block in enumerate(python_blocks(
                doc.read_text(encoding="utf-8")))]


@pytest.mark.parametrize("name,code", docs_python_blocks(), ids=[n for n, _ in docs_python_blocks()])
def test_docs_python_imports_public_names_that_exist(name, code):
    """The guide's snippets (run in README only) parse and import only public names that exist."""
    tree = ast.parse(code, filename=name)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("featurebank"):
            assert not any(p.startswith("_") for p in node.module.split(".")), \
                f"{name} imports the private module {node.module}"
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert not alias.name.startswith("_"), f"{name} imports private {alias.name}"
                assert hasattr(module, alias.name) or importlib.util.find_spec(
                    f"{node.module}.{alias.name}"), f"{name}: {node.module} has no {alias.name}"


# -- links and commands --------------------------------------------------------------------------

@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_name_files_that_exist(doc):
    text = doc.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # links inside code are code
    missing = []
    for m in LINK.finditer(text):
        target, _, anchor = m.group(2).partition("#")
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):  # anchors, http:, mailto:
            continue
        path = doc.parent / target
        if not path.exists():
            missing.append(target)
        elif anchor and path.suffix == ".md" and anchor not in heading_anchors(path):
            missing.append(m.group(2))
    assert not missing, f"{doc.relative_to(REPO)} links to missing files: {sorted(set(missing))}"


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped."""
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}


def test_readme_commands_are_commands_of_the_cli():
    from featurebank.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    shown = set()
    for block in re.findall(r"^```(?:bash|console)\n(.*?)^```", _readme(), flags=re.S | re.M):
        shown |= set(re.findall(r"^\s*(?:\$ )?featurebank ([a-z][a-z-]*)", block, flags=re.M))
    assert shown, "README shows no featurebank command"
    unknown = sorted(shown - set(sub.choices))
    assert not unknown, f"README shows commands the CLI does not have: {unknown}"
