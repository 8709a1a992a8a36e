"""What ``compare`` shows: the table, the JSON of every candidate, the accuracy-vs-ms plot with
its Pareto front, and the Wilson interval of the one TEST figure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from featurebank.compare._select import FrozenCandidate

#: z of a two-sided 95 % interval
Z95 = 1.959963984540054


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (correct / n): unlike the normal approximation it
    stays inside [0, 1] and keeps its coverage near 0 and 1 and for small n."""
    if n <= 0:
        raise ValueError("a proportion of 0 images has no interval")
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (ms, accuracy) no other point beats on both (faster and at least
    as accurate, or as fast and more accurate), fastest first."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def table(sets: list[FrozenCandidate], chosen: FrozenCandidate | None) -> str:
    """One line per feature set, LogME order: CV accuracy with its spread (where halving ran),
    LogME, dimensions and ms per image; the chosen one marked with *."""
    lines = [f"  {'feature set':<44}{'CV acc':>8}{'+-':>7}{'clf':>11}{'LogME':>9}{'dim':>6}"
             f"{'ms/img':>8}"]
    for s in sets:
        cv = s.cv
        acc = f"{cv['accuracy']:.4f}" if cv else "-"
        spread = f"{cv['std']:.4f}" if cv else ""
        clf = cv["classifier"] if cv else ""
        if s.screened_on is not None:  # LogME on the slice only: never cross-validated
            acc, clf = "out", f"slice {s.screened_on}"
        ms = f"{s.ms_per_image:.1f}" if s.ms_per_image is not None else "-"
        mark = "*" if s is chosen else " "
        lines.append(f"{mark} {s.name[:43]:<44}{acc:>8}{spread:>7}{clf:>11}{s.logme:>9.3f}"
                     f"{s.dim:>6}{ms:>8}")
    out = [s for s in sets if s.screened_on is not None]
    if out:
        lines.append(f"  ({len(out)} sets screened out: their LogME is on a slice of "
                     f"{out[0].screened_on} TRAIN images; the rest of TRAIN was not embedded "
                     "for them)")
    return "\n".join(lines)


def plot_accuracy_vs_ms(sets: list[FrozenCandidate], chosen: FrozenCandidate, path: Path) -> Path | None:
    """CV accuracy against ms per image for every cross-validated feature set, one colour per
    backbone, the Pareto front drawn, the chosen set ringed."""
    from featurebank.classical import pyplot, save_figure

    # (ms, accuracy, spread, set) of every set with both figures
    shown = [(s.ms_per_image, s.cv["accuracy"], s.cv["std"], s) for s in sets
             if s.cv is not None and s.ms_per_image is not None]
    if not shown:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    backbones = list(dict.fromkeys(s.backbone.label for *_, s in shown))
    colours = plt.get_cmap("tab10")
    for i, label in enumerate(backbones):
        mine = [row for row in shown if row[3].backbone.label == label]
        ax.errorbar([r[0] for r in mine], [r[1] for r in mine], yerr=[r[2] for r in mine],
                    fmt="o", color=colours(i % 10), label=label, capsize=3)
        for ms, acc, _, s in mine:
            ax.annotate("+".join(s.cuts), (ms, acc), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
    points = [(r[0], r[1]) for r in shown]
    front = pareto_front(points)
    ax.step([points[i][0] for i in front], [points[i][1] for i in front], where="post",
            color="0.4", linestyle="--", label="Pareto front")
    for ms, acc, _, s in shown:
        if s is chosen:
            ax.scatter([ms], [acc], s=220, facecolors="none", edgecolors="black", label="chosen")
    ax.set_xlabel("ms per image (decode + graph, this machine)")
    ax.set_ylabel("CV accuracy on TRAIN (bars: spread over folds)")
    out = [s for s in sets if s.screened_on is not None]
    ax.set_title("compare: accuracy against cost" + (
        f"\n({len(out)} sets screened out on {out[0].screened_on} images: not shown)"
        if out else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
