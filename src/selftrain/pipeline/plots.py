"""The run reports' plots (matplotlib, drawn without pyplot on the Agg canvas): a row of panels
in matplotlib's default style, saved as PNG atomically and with no metadata that changes from
one save to the next (no version, no date), so a report rebuilt from the same run directory
has the same bytes as the one the run wrote."""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from selftrain.io import write_bytes_atomic

if TYPE_CHECKING:
    from matplotlib.axes import Axes

Points = Sequence[tuple[float, float]]  # (x, y) of one line
Interval = tuple[float, float, float]  # a value, its interval's low and high end


@contextmanager
def panels(path: str | Path, n: int, width: float = 4.0, height: float = 3.2) -> Iterator[list]:
    """``n`` side-by-side axes to draw on; saved to ``path`` as PNG when the block ends
    without an error."""
    import matplotlib.style
    from matplotlib.figure import Figure

    with matplotlib.style.context("default"):  # the user's matplotlibrc does not change it
        fig = Figure(figsize=(width * max(1, n), height))
        axes = fig.subplots(1, max(1, n), squeeze=False)[0]
        yield list(axes)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    write_bytes_atomic(path, buf.getvalue())


def lines(
    ax: Axes,
    series: Mapping[str, Points],
    title: str,
    xlabel: str,
    ylabel: str,
    integer_x: bool = False,
) -> None:
    """One line with markers per named series; a legend when there are several."""
    from matplotlib.ticker import MaxNLocator

    for name, points in series.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", markersize=3, label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if sum(bool(points) for points in series.values()) > 1:
        ax.legend(fontsize="small")


def interval_bars(
    ax: Axes,
    groups: Sequence[str],
    series: Mapping[str, Sequence[Interval | None]],
    title: str,
    ylabel: str,
    top: float | None = None,
) -> None:
    """Grouped bars: one group per name in ``groups``, one bar per series (None: no bar), each
    with its interval as an error bar; ``top``: the y axis's upper end."""
    width = 0.8 / max(1, len(series))
    drawn = 0
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        shown = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
        if not shown:
            continue
        x, v = [s[0] for s in shown], [s[1] for s in shown]
        below = [max(0.0, y - lo) for y, lo, _ in v]
        above = [max(0.0, hi - y) for y, _, hi in v]
        ax.bar(x, [y for y, _, _ in v], width, label=name)
        drawn += 1
        ax.errorbar(x, [y for y, _, _ in v], yerr=[below, above], fmt="none", ecolor="black",
                    capsize=3, linewidth=1)  # fmt: skip
    ax.set_xticks(range(len(groups)), groups)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    if top is not None:
        ax.set_ylim(0, top)
    if drawn:
        ax.legend(fontsize="small")
