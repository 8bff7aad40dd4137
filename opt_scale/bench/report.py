"""Print a benchmark table, write its JSON, draw its plot."""

from __future__ import annotations

import json
from pathlib import Path


def print_table(rows: list[dict], columns: list[str] | None = None, title: str = "") -> None:
    """Right-aligned plain-text columns: a dozen lines, where tabulate or rich
    would be a dependency for what benchmarks print once."""
    if not rows:
        print(f"{title}: no rows")
        return
    columns = columns or list(rows[0])
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def write_json(result: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"results: {path}")


def plot_lines(series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str, path: str | Path) -> None:
    """``series``: name -> (xs, ys)."""
    plot_panels([(series, xlabel, ylabel, title)], path)


Panel = tuple[dict[str, tuple[list, list]], str, str, str]  # (series, xlabel, ylabel, title)


def plot_panels(panels: list[Panel], path: str | Path) -> None:
    """Side-by-side line plots in one PNG, one per panel."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    many = max(len(series) for series, *_ in panels) > 4  # a legend that would cover the lines goes beside them
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels) + 2.5 * many, 4), squeeze=False)
    for ax, (series, xlabel, ylabel, title) in zip(axes[0], panels):
        xs_all = sorted({x for xs, _ in series.values() for x in xs}, key=str)
        for name, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o" if len(xs) <= 40 else None, markersize=3, label=name)
        if len(xs_all) <= 12 and all(isinstance(x, int) for x in xs_all):  # worker counts, world sizes: no 1.5
            ax.set_xticks(xs_all)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if many:
            ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
        else:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return "-" if v is None else str(v)
