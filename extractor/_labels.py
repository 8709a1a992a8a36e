"""Text tables of labels and counts (standard library only: ``featurebank store info`` prints
one without loading an engine)."""

from __future__ import annotations


def label_table(counts: dict[str, int], title: str, limit: int = 50) -> str:
    """A small text table of label -> count (``(no label)`` for ''), most frequent first."""
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    width = max([len(k or "(no label)") for k, _ in rows[:limit]] + [5])
    out = [f"{len(rows)} label(s), {title}:"]
    out += [f"  {k or '(no label)':<{width}}  {n:>7}" for k, n in rows[:limit]]
    if len(rows) > limit:
        out.append(f"  ... and {len(rows) - limit} more labels")
    return "\n".join(out)
