"""An audit written for people: ``report.json``, one CSV per finding, ``exclude.txt`` (content
keys to leave out of training, for ``--exclude``) and ``contact_sheet.png`` (thumbnails of the
top leaks, near-duplicate groups, suspect labels and outliers)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from featurebank.classical._report import pyplot, save_figure
from featurebank.classical.audit._options import AuditOptions
from featurebank.paths import write_json

__all__ = ["write_report"]

THUMB = 96


def write_report(report, report_dir: str | Path, options: AuditOptions) -> Path:
    out = Path(report_dir)
    out.mkdir(exist_ok=True)
    write_json(report.to_dict(), out / "report.json")
    _csv(out / "exact_duplicates.csv", ["key", "store", "path"],
         [[d["key"], c["store"], c["path"]] for d in report.exact_duplicates for c in d["copies"]])
    _csv(out / "near_duplicates.csv", ["group", "store", "key", "path", "label", "group_similarity",
                                       "found_by"],
         [[g_i, m["store"], m["key"], m["path"], m["label"], g["similarity"], g.get("found_by", "")]
          for g_i, g in enumerate(report.near_duplicates) for m in g["members"]])
    _csv(out / "leaks.csv", ["similarity", "pixel_similarity", "found_by", "test_store", "test_path",
                             "test_key", "test_label", "train_path", "train_key", "train_label"],
         [[r["similarity"], r.get("pixel_similarity"), r.get("found_by", ""), r["test"]["store"],
           r["test"]["path"], r["test"]["key"], r["test"]["label"], r["train"]["path"],
           r["train"]["key"], r["train"]["label"]] for r in report.leaks])
    _csv(out / "pixel_unreadable.csv", ["store", "row", "path", "reason"],
         [[u["store"], u["row"], u["path"], u["reason"]]
          for u in report.pixel_check.get("unreadable", [])])
    _csv(out / "label_issues.csv", ["score", "key", "path", "given", "suggested"],
         [[r["score"], r["key"], r["path"], r["given"], r["suggested"]] for r in report.label_issues])
    _csv(out / "outliers.csv", ["distance", "store", "key", "path", "label"],
         [[r["distance"], r["store"], r["key"], r["path"], r["label"]] for r in report.outliers])
    keys = report.exclusions()
    (out / "exclude.txt").write_text(
        "# content keys to leave out of training ('featurebank train ... --exclude exclude.txt'):\n"
        "# suspect labels, training copies of leaked test images, extra near-duplicates\n"
        + "".join(k + "\n" for k in keys))
    if options.sheet_rows:
        contact_sheet(report, out / "contact_sheet.png", options.sheet_rows)
    return out


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _thumb(path: str) -> np.ndarray:
    """The image at a stored path as a square thumbnail; grey where it cannot be read."""
    from PIL import Image

    from featurebank.extractor import open_source

    try:
        img = Image.open(io.BytesIO(open_source(path))).convert("RGB")
    except Exception:  # a moved or broken file: the sheet still shows the rest
        return np.full((THUMB, THUMB, 3), 128, np.uint8)
    scale = THUMB / max(img.size)  # small images (digits, 28 px garments) are enlarged
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                     Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (THUMB, THUMB), (255, 255, 255))
    canvas.paste(img, ((THUMB - img.width) // 2, (THUMB - img.height) // 2))
    return np.asarray(canvas)


def _sheet_rows(report, rows: int) -> list[tuple[str, list[tuple[str, str]]]]:
    """(section title, [(path, caption), ...]) per sheet row, sections in order of harm."""
    lines = []
    for r in report.leaks[:rows]:
        lines.append((f"leak {r['similarity']:.3f} ({r.get('found_by', 'features')})",
                      [(r["test"]["path"], "test"), (r["train"]["path"], "train")]))
    for g in report.near_duplicates[:rows]:
        lines.append((f"near-dup x{g['size']} >= {g['similarity']:.3f}",
                      [(m["path"], m["label"]) for m in g["members"][:6]]))
    issues = report.label_issues[:rows * 4]
    for i in range(0, len(issues), 4):
        lines.append(("suspect labels", [(r["path"], f"{r['given']} -> {r['suggested']}")
                                         for r in issues[i:i + 4]]))
    shown = report.outliers[:rows * 4]
    for i in range(0, len(shown), 4):
        lines.append(("outliers", [(r["path"], f"{r['label']} d={r['distance']:.2f}")
                                   for r in shown[i:i + 4]]))
    return lines


def contact_sheet(report, path: Path, rows: int) -> Path:
    """One row of thumbnails per leak, near-duplicate group, and four suspect labels or
    outliers, each captioned."""
    plt = pyplot()
    lines = _sheet_rows(report, rows) or [("nothing found", [])]
    cols = max(2, max(len(items) for _, items in lines))
    fig, axes = plt.subplots(len(lines), cols + 1, figsize=(1.5 * (cols + 1), 1.6 * len(lines)),
                             squeeze=False)
    for ax_row, (title, items) in zip(axes, lines, strict=True):
        ax_row[0].text(0.5, 0.5, title, ha="center", va="center", fontsize=7, wrap=True)
        for ax in ax_row:
            ax.axis("off")
        for ax, (img_path, caption) in zip(ax_row[1:], items, strict=False):
            ax.imshow(_thumb(img_path))
            ax.set_title(caption[:24], fontsize=6)
    fig.suptitle(f"audit of {Path(report.train).name} at {report.spec}"[:110], fontsize=8)
    return save_figure(fig, path)
