"""``megaclass plot``: run folders' metrics.jsonl drawn against steps, one panel per quantity
(training loss, each held-out metric, samples/s, active classes), several runs overlaid.

Needs matplotlib (``pip install "megaclass[plot]"``), imported on first use. The figure is drawn
on its own Agg canvas, so matplotlib's global state (pyplot, the default backend) stays as the
caller left it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

# The fields of every log window's record (Trainer.log) that are not held-out metrics. Every
# other number in metrics.jsonl is one (top1, valid_ndcg@10, ...), except the counts of
# evaluated samples (eval_samples, valid_samples, ...).
WINDOW_FIELDS = frozenset(
    {
        "step",
        "loss",
        "lr",
        "samples_per_s",
        "active_classes",
        "embedding_cosine",
        "embedding_rank",
        "loss_vs_first",
    }
)
WINDOW_PANELS = {
    "loss": "training loss",
    "samples_per_s": "throughput (samples/s)",
    "active_classes": "active classes per step",
}
COLUMNS = 3
PANEL_INCHES = (4.5, 3.2)  # width, height


def plot_runs(run_dirs: list[str | Path], output: str | Path) -> Path:
    """Draw the metrics of the runs in ``run_dirs`` into the image ``output`` (its format from
    the suffix: .png, .svg, .pdf, ...); the path written."""
    runs = list(zip(run_labels(run_dirs), [read_metrics(d) for d in run_dirs], strict=True))
    keys = panel_keys([records for _, records in runs])
    rows, columns = _grid(len(keys))
    figure = _agg_figure(rows, columns)
    for index, key in enumerate(keys):
        _draw_panel(figure.add_subplot(rows, columns, index + 1), key, runs)
    _add_legend(figure)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    return output


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``run_dir``'s metrics.jsonl; a ValueError naming the folder when it has
    none."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{run_dir} has no metrics.jsonl: not a run folder of megaclass train")
    records = [
        _parse(path, number, line)
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.strip()
    ]
    if not records:
        raise ValueError(f"{path} is empty: the run {run_dir} has not logged a step yet")
    return records


def run_labels(run_dirs: list[str | Path]) -> list[str]:
    """Each run's name in the legend: its folder's name, or the paths as given when two
    folders have the same name."""
    names = [Path(d).resolve().name for d in run_dirs]
    return names if len(set(names)) == len(names) else [str(d) for d in run_dirs]


def panel_keys(runs: list[list[dict]]) -> list[str]:
    """The quantities drawn, one panel each: the loss, the held-out metrics that the runs'
    records hold (in order of first appearance), samples/s and active classes."""
    held_out = dict.fromkeys(
        key
        for records in runs
        for record in records
        for key, value in record.items()
        if key not in WINDOW_FIELDS and not key.endswith("samples") and _is_number(value)
    )
    return ["loss", *held_out, "samples_per_s", "active_classes"]


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """``key``'s values in step order, at the steps whose record holds it; a step logged twice
    (a run resumed from a checkpoint before its last logged step) keeps its later value."""
    values = {record["step"]: record[key] for record in records if key in record}
    steps = sorted(values)
    return steps, [values[step] for step in steps]


def _draw_panel(axes, key: str, runs: list[tuple[str, list[dict]]]) -> None:
    """One quantity of every run; a run keeps its colour in every panel. Held-out metrics,
    measured at a few steps only, get a marker at each."""
    held_out = key not in WINDOW_PANELS
    for colour, (label, records) in enumerate(runs):
        steps, values = series(records, key)
        marker = "o" if held_out else None
        axes.plot(steps, values, label=label, color=f"C{colour}", marker=marker, markersize=3)
    axes.set_title(f"held-out {key}" if held_out else WINDOW_PANELS[key])
    axes.set_xlabel("step")
    axes.locator_params(axis="x", integer=True)
    axes.grid(alpha=0.3)


def _add_legend(figure) -> None:
    """One legend above the panels naming each run, by its line in the first panel that has
    one."""
    lines = {}
    for axes in figure.axes:
        for line in axes.get_lines():
            lines.setdefault(line.get_label(), line)
    figure.legend(lines.values(), lines.keys(), loc="outside upper center", ncols=COLUMNS)


def _grid(panels: int) -> tuple[int, int]:
    """Rows and columns for ``panels`` panels."""
    columns = min(COLUMNS, panels)
    return math.ceil(panels / columns), columns


def _agg_figure(rows: int, columns: int):
    """An empty figure on its own Agg canvas, sized for a grid of panels."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError('megaclass plot needs matplotlib: pip install "megaclass[plot]"') from None
    width, height = PANEL_INCHES
    figure = Figure(figsize=(width * columns, height * rows + 0.5), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _parse(path: Path, number: int, line: str) -> dict:
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{number} is not a JSON record: {error}") from None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
