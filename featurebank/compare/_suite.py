"""Several data sets in one run: a suite file, one ``compare`` per data set, one table.

A suite file (TOML) lists the data sets; paths are relative to the file::

    [[dataset]]
    name = "fashion"
    train = "fashion/train"      # folder, list file or store
    test = "fashion/test"        # optional

Every data set's candidates are checked before any is embedded. The table ranks each feature
set (backbone, cuts, pooling) within each data set the way ``compare`` chooses (the halving
round it reached, then CV accuracy, then LogME), and orders the rows by the mean rank.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from featurebank.compare._options import CompareOptions
from featurebank.errors import FeaturebankError


@dataclass(frozen=True)
class SuiteEntry:
    name: str
    train: str
    test: str | None


def read_suite(path: str | Path) -> list[SuiteEntry]:
    """The data sets of a suite file, every path checked to exist."""
    path = Path(path)
    if not path.is_file():
        raise FeaturebankError(f"suite file {path} does not exist")
    try:
        entries = tomllib.loads(path.read_text()).get("dataset")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FeaturebankError(f"suite file {path} is not valid TOML ({exc})") from exc
    if not isinstance(entries, list) or not entries:
        raise FeaturebankError(f"suite file {path} lists no [[dataset]] with name and train")
    out, problems = [], []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) or "train" not in e:
            problems.append(f"[[dataset]] number {i + 1} needs name and train")
            continue
        paths = {k: str((path.parent / str(e[k])).resolve()) for k in ("train", "test") if k in e}
        for key, p in paths.items():
            if not Path(p).exists():
                problems.append(f"{e['name']}: {key} {p} does not exist")
        out.append(SuiteEntry(e["name"], paths["train"], paths.get("test")))
    names = [e.name for e in out]
    problems += [f"data set name {n!r} is used twice" for n in sorted(set(names))
                 if names.count(n) > 1]
    if problems:
        raise FeaturebankError(f"suite file {path}:\n  " + "\n  ".join(problems))
    return out


def _ranks(result) -> dict[str, int]:
    """Feature set name -> rank (1: best) within one data set, the order compare chooses in."""
    order = sorted(result.sets, key=lambda s: (-s.rounds,
                                               -(s.cv["accuracy"] if s.cv else -1.0),
                                               s.screened_on is not None,  # slice LogME last
                                               -s.logme))
    return {s.name: i + 1 for i, s in enumerate(order)}


def run_suite(suite: str | Path, *, options: CompareOptions | None = None,
              report: str | Path, progress: bool = True) -> dict:
    """``compare`` on every data set of ``suite``; each one's classifier, JSON and plot in
    ``report/NAME/``, the table across them in ``report/suite.json``. Returns that table."""
    from featurebank.compare._candidates import check_collection, resolve_backbones
    from featurebank.compare._compare import compare
    from featurebank.paths import write_json

    options = options or CompareOptions()
    entries = read_suite(suite)
    report = Path(report)
    if not report.parent.is_dir():
        raise FeaturebankError(f"cannot write the report {report}: folder {report.parent} "
                               "does not exist")
    for e in entries:  # every data set checked before the first is embedded
        check_collection(e.train, f"{e.name} TRAIN")
        if e.test:
            check_collection(e.test, f"{e.name} TEST")
    resolve_backbones(options.models, options.layers)
    report.mkdir(exist_ok=True)
    per_set: dict[str, dict] = {}
    for e in entries:
        folder = report / e.name
        folder.mkdir(exist_ok=True)
        result = compare(e.train, e.test, options=options, output=folder / "chosen.joblib",
                         report=folder, work_dir=folder / "work", progress=progress)
        ranks = _ranks(result)
        for s in result.sets:
            row = per_set.setdefault(s.name, {"feature_set": s.name, "datasets": {}})
            row["datasets"][e.name] = {"rank": ranks[s.name], "logme": s.logme,
                                       "cv_accuracy": s.cv["accuracy"] if s.cv else None,
                                       "screened_out_on": s.screened_on,
                                       "chosen": s is result.chosen,
                                       "test_accuracy": (result.test or {}).get("accuracy")
                                       if s is result.chosen else None}
    for row in per_set.values():
        places = [d["rank"] for d in row["datasets"].values()]
        row["mean_rank"] = sum(places) / len(places)
        row["complete"] = len(places) == len(entries)
    rows = sorted(per_set.values(), key=lambda r: (not r["complete"], r["mean_rank"]))
    table = {"suite": str(suite), "datasets": [e.name for e in entries], "rows": rows}
    write_json(table, report / "suite.json")
    return table


def suite_table(table: dict) -> str:
    """The suite's table as text: per data set the rank (CV accuracy), then the mean rank."""
    names = table["datasets"]
    head = f"  {'feature set':<42}" + "".join(f"{n[:16]:>18}" for n in names) + f"{'mean rank':>11}"
    lines = [head]
    for r in table["rows"]:
        cells = []
        for n in names:
            d = r["datasets"].get(n)
            acc = f" ({d['cv_accuracy']:.3f})" if d and d["cv_accuracy"] is not None else ""
            cells.append(f"{(str(d['rank']) + acc) if d else '-':>18}")
        mark = "*" if any(d["chosen"] for d in r["datasets"].values()) else " "
        lines.append(f"{mark} {r['feature_set'][:41]:<42}" + "".join(cells)
                     + f"{r['mean_rank']:>11.2f}")
    return "\n".join(lines)
