"""The accuracy-against-bytes plot of one or more runs."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from ecqx.coding.files import atomic_write

from .config import RoundResult


def _labelled_round(rnd: int, rounds: int) -> bool:
    """Rounds 1–5, every fifth and the last carry their number in the plot."""
    return rnd <= 5 or rnd % 5 == 0 or rnd == rounds


def _minor_label(value: float, _position) -> str:
    """Minor ticks of the log axis: only 2 and 5 times a power of ten are labelled, so labels never touch."""
    mantissa = round(value / 10 ** np.floor(np.log10(value)), 6) if value > 0 else 0
    return f"{value:g}" if mantissa in (2.0, 5.0) else ""


def accuracy_bytes_figure(runs: Mapping[str, Sequence[RoundResult]], title: str = "federated averaging"):
    """A ``matplotlib.figure.Figure``: test accuracy after each round against the cumulative bytes sent
    (up + down, all clients) for every run in ``runs`` (label → per-round results)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot, no matplotlib.use()
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    largest = max((sum(r.bytes_up + r.bytes_down for r in results) for results in runs.values()), default=0)
    unit, scale = ("MiB", 2**20) if largest >= 2**20 else ("KiB", 2**10)
    figure = Figure(figsize=(7.0, 5.0))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, (label, results) in enumerate(runs.items()):
        sent = np.cumsum([r.bytes_up + r.bytes_down for r in results]) / scale
        accuracy = [100 * r.accuracy for r in results]
        axes.plot(sent, accuracy, "o-", color=f"C{index}",
                  label=f"{label}: {sent[-1]:.3g} {unit} in {len(results)} rounds, "
                        f"final accuracy {accuracy[-1]:.2f} %")
        for r, x, y in zip(results, sent, accuracy, strict=True):
            if not _labelled_round(r.round, len(results)):  # late rounds crowd together on a log axis
                continue
            axes.annotate(str(r.round), (x, y), textcoords="offset points", xytext=(4, -11),
                          fontsize="x-small", color=f"C{index}")
    axes.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axes.xaxis.set_major_formatter(plain)
    axes.xaxis.set_minor_formatter(FuncFormatter(_minor_label))
    axes.tick_params(axis="x", which="minor", labelsize="x-small")
    axes.set_xlabel(f"cumulative bytes sent, up + down, all clients [{unit}] (log scale)")
    axes.set_ylabel("test accuracy [%]")
    axes.set_title(title, fontsize="medium", fontweight="bold")
    axes.grid(True, which="both", alpha=0.3)
    axes.margins(x=0.08, y=0.1)
    axes.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16),  # outside: hides no point
                title="numbers at the points: round", title_fontsize="x-small")
    figure.tight_layout()
    return figure


def write_accuracy_bytes_plot(path: str | os.PathLike, runs: Mapping[str, Sequence[RoundResult]],
                              title: str = "federated averaging") -> None:
    """Writes :func:`accuracy_bytes_figure` as PNG, atomically."""
    figure = accuracy_bytes_figure(runs, title)
    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=120))
