"""`gpt2reg compare`: variants side by side, as a table, a JSON document and a chart.

Two comparisons:

- variants (`compare REF REF...`): the question is which variant to use, so the
  chart leads with quality against cost: scatter panels of a quality metric
  (perplexity unless another is asked for) against size on disk and against
  measured greedy decoding speed, each point labelled with its ref and the
  Pareto front marked. Bar panels follow for size, parameters and each metric
  that at least two of the variants hold; a metric only one variant holds
  compares with nothing, so it stays in the table and out of the chart.
- versions (`compare NAME --versions`): one metric over the versions of a
  registered model, as a line over version numbers with each version's
  operation, the view MLflow's registry lacks (mlflow/mlflow#4806).

Either way the document carries the chart's data (`panels`, `fronts`,
`omitted_panels`), so what the chart shows can be checked without its pixels,
and both are logged to MLflow as a comparison run.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from registry.errors import UsageError

# Shown first, in this order, when present; other metrics follow by name.
LEADING_METRICS = ("perplexity", "greedy_tokens_per_second", "speedup", "max_abs_logit_diff", "top1_agreement",
                   "teacher_perplexity", "parameter_compression", "best_val_loss")
# Figures a registry records that are bookkeeping, not quality or speed.
# (train_loss too: a distillation's loss mixes soft targets in, so it does not compare with a fine-tune's.)
NOT_COMPARED = {"parameters", "size_bytes", "train_steps", "train_tokens", "train_seconds", "best_step",
                "diverged_at_step", "tokens", "teacher_parameters", "total_parameters", "trainable_parameters",
                "train_loss"}
# Higher is better for these (and for task metrics ending with these names); lower for the rest.
HIGHER_IS_BETTER = ("accuracy", "accuracy_norm", "exact_match", "f1", "bleu", "rouge1", "rouge2", "rougeL",
                    "greedy_tokens_per_second", "tokens_per_second", "speedup", "top1_agreement",
                    "parameter_compression", "trainable_share")

DEFAULT_QUALITY_METRIC = "perplexity"
# The speed a user of a variant gets: batch-1 greedy decoding where `generate` runs it, measured by
# quantize and export (for the new variant and its parent). A fine-tune's `tokens_per_second` is
# training throughput, which says nothing about serving, so it is not a cost axis.
SPEED_METRIC = "greedy_tokens_per_second"
SIZE = "size_bytes"
# A bar panel needs this many variants holding its figure: one bar compares with nothing.
SHARED_BY = 2
# Values spanning more than this ratio are drawn on a log axis (a random-weights perplexity beside trained ones).
LOG_SCALE_RATIO = 100
# Up to this many versions, each point is labelled with its operation and each version has its tick.
LABELLED_VERSIONS = 30
AXIS_LABELS = {SIZE: "size (MB)", "parameters": "parameters (M)", SPEED_METRIC: "greedy tokens/s"}
AXIS_UNITS = {SIZE: 1e6, "parameters": 1e6}


def higher_is_better(metric: str) -> bool:
    return metric.rsplit(".", 1)[-1] in HIGHER_IS_BETTER


def better(metric: str) -> str:
    return "higher" if higher_is_better(metric) else "lower"


def compared_metrics(variants) -> list[str]:
    held = {m for v in variants for m in v.metrics} - NOT_COMPARED
    return [m for m in LEADING_METRICS if m in held] + sorted(held - set(LEADING_METRICS))


def table(variants) -> dict:
    """The comparison as data: one row per variant, and the metric names in display order."""
    metrics = compared_metrics(variants)
    rows = []
    for v in variants:
        rows.append({
            "ref": v.ref, "operation": v.operation, "format": v.tags.get("format"),
            "weights": v.tags.get("weights") or v.tags.get("quantization") or "float32",
            "parameters": v.parameters, "size_bytes": v.size_bytes, "tags": dict(v.tags),
            "metrics": {m: v.metrics[m] for m in metrics if m in v.metrics},
        })
    return {"variants": rows, "metrics": metrics}


# ---------------------------------------------------------------- the chart's data


def figure_of(row: dict, metric: str) -> float | None:
    """`metric` of a table row as a plottable number: None where it is missing or not finite
    (a diverged variant's perplexity is inf; a point at infinity cannot be placed or compared)."""
    value = row[metric] if metric in (SIZE, "parameters") else row["metrics"].get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def pareto_front(points: list[dict], *, x_higher: bool, y_higher: bool) -> list[str]:
    """The refs of `points` ({"ref", "x", "y"}) that no other point dominates: none is at least as
    good on both axes and better on one. Equal points do not dominate each other, so both stay."""
    def as_good(a, b, higher):
        return a >= b if higher else a <= b

    front = []
    for p in points:
        dominated = any(
            as_good(q["x"], p["x"], x_higher) and as_good(q["y"], p["y"], y_higher)
            and (q["x"] != p["x"] or q["y"] != p["y"])
            for q in points)
        if not dominated:
            front.append(p["ref"])
    return front


def _refs(refs: list[str]) -> str:
    return ", ".join(refs) if len(refs) <= 6 else ", ".join(refs[:6]) + f" and {len(refs) - 6} more"


def scatter_panel(rows: list[dict], quality: str, cost: str) -> tuple[dict | None, dict | None]:
    """The panel of `quality` against `cost` (size or speed), or None and the reason it is not drawn."""
    panel_id = f"{quality} vs {cost}"
    points, left_out = [], []
    for row in rows:
        x, y = figure_of(row, cost), figure_of(row, quality)
        if x is None or y is None:
            left_out.append({"ref": row["ref"], "missing": [m for m, v in ((cost, x), (quality, y)) if v is None]})
        else:
            points.append({"ref": row["ref"], "x": x, "y": y})
    if len(points) < SHARED_BY:
        holders = [p["ref"] for p in points]
        where = f"only {holders[0]} holds" if holders else "no variant holds"
        # Name only the figures some variant lacks (every variant has a size).
        lacking = [m for m in (quality, cost) if any(m in entry["missing"] for entry in left_out)]
        what = f"both {quality} and {cost}" if len(lacking) == 2 else lacking[0]
        measured = f" ({SPEED_METRIC} is measured by quantize and export)" if SPEED_METRIC in lacking else ""
        return None, {"id": panel_id, "kind": "scatter", "reason": f"{where} {what}{measured}"}
    front = pareto_front(points, x_higher=higher_is_better(cost), y_higher=higher_is_better(quality))
    for point in points:
        point["on_front"] = point["ref"] in front
    return {"id": panel_id, "kind": "scatter",
            "x": {"metric": cost, "better": better(cost)}, "y": {"metric": quality, "better": better(quality)},
            "points": points, "front": front, "left_out": left_out}, None


def bar_panel(rows: list[dict], metric: str) -> tuple[dict | None, dict | None]:
    """The bar panel of `metric`, or None and the reason it is not drawn (fewer than two variants hold it)."""
    values = {row["ref"]: figure_of(row, metric) for row in rows}
    holders = [ref for ref, value in values.items() if value is not None]
    if len(holders) < SHARED_BY:
        return None, {"id": metric, "kind": "bar",
                      "reason": f"only {holders[0]} holds it" if holders else "no variant holds a finite value"}
    return {"id": metric, "kind": "bar", "metric": metric, "better": better(metric),
            "values": {ref: value for ref, value in values.items() if value is not None},
            "left_out": [{"ref": ref, "missing": [metric]} for ref, value in values.items() if value is None]}, None


def chart_of_variants(document: dict, quality: str | None) -> None:
    """Add the variants chart's panels, fronts and omitted panels to `document` (a `table`).

    `quality` None: no variant holds the default quality metric, so there are no scatter panels."""
    rows = document["variants"]
    panels, omitted = [], []
    if quality is None:
        omitted += [{"id": f"{DEFAULT_QUALITY_METRIC} vs {cost}", "kind": "scatter",
                     "reason": f"no variant holds {DEFAULT_QUALITY_METRIC} (record it with `gpt2reg evaluate`, "
                               "or give --metric)"} for cost in (SIZE, SPEED_METRIC)]
        candidates = []
    else:
        # Speed against itself would be a diagonal, not a trade-off.
        costs = [SIZE] + ([SPEED_METRIC] if quality != SPEED_METRIC else [])
        candidates = [scatter_panel(rows, quality, cost) for cost in costs]
    candidates += [bar_panel(rows, metric) for metric in (SIZE, "parameters", *document["metrics"])]
    for panel, why_not in candidates:
        if panel is not None:
            panels.append(panel)
        else:
            omitted.append(why_not)
    document.update(panels=panels, omitted_panels=omitted,
                    fronts={p["id"]: p["front"] for p in panels if p["kind"] == "scatter"})


def version_series(rows: list[dict], metric: str) -> dict:
    """The line panel of `metric` over the versions of one model (rows in version order)."""
    points, left_out = [], []
    for row in rows:
        version = int(row["ref"].rsplit("/", 1)[1])
        value = figure_of(row, metric)
        if value is None:
            left_out.append({"ref": row["ref"], "version": version, "missing": [metric]})
        else:
            points.append({"ref": row["ref"], "version": version, "operation": row["operation"], "y": value})
    pick = max if higher_is_better(metric) else min
    return {"id": f"{metric} by version", "kind": "line",
            "x": {"metric": "version"}, "y": {"metric": metric, "better": better(metric)},
            "points": points, "best": pick(points, key=lambda p: p["y"])["ref"] if points else None,
            "left_out": left_out}


def choose_metric(variants, metric: str | None, among: str) -> str | None:
    """The quality metric: the one asked for (which one of `variants` must hold), else perplexity
    where any holds it, else None (the variants chart then has no quality panels and says why)."""
    held = compared_metrics(variants)
    if metric is None:
        return DEFAULT_QUALITY_METRIC if DEFAULT_QUALITY_METRIC in held else None
    if metric not in held:
        choices = ", ".join(held) if held else "none yet: record one with `gpt2reg evaluate`"
        raise UsageError(f"no {among} holds metric {metric!r}; give --metric one they hold ({choices})")
    return metric


# ---------------------------------------------------------------- drawing


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _scaled(metric: str, value: float) -> float:
    return value / AXIS_UNITS.get(metric, 1)


def _wide(values) -> bool:
    """Whether `values` want a log axis: all positive (a log axis would drop the others) and far apart."""
    values = list(values)
    return len(values) > 1 and min(values) > 0 and max(values) / min(values) > LOG_SCALE_RATIO


def _label(metric: str) -> str:
    return AXIS_LABELS.get(metric, metric)


def _draw_scatter(axis, panel: dict) -> None:
    x_metric, y_metric = panel["x"]["metric"], panel["y"]["metric"]
    points = panel["points"]
    xs = [_scaled(x_metric, p["x"]) for p in points]
    ys = [p["y"] for p in points]
    on_front = [p["on_front"] for p in points]
    if not all(on_front):
        axis.scatter([x for x, f in zip(xs, on_front) if not f], [y for y, f in zip(ys, on_front) if not f],
                     color="#8c8c8c", s=28, zorder=2, label="dominated")
    axis.scatter([x for x, f in zip(xs, on_front) if f], [y for y, f in zip(ys, on_front) if f],
                 color="#dd8452", edgecolor="black", s=60, zorder=3, label="Pareto front")
    front = sorted((x, y) for x, y, f in zip(xs, ys, on_front) if f)
    if len(front) > 1:
        axis.plot([x for x, _ in front], [y for _, y in front], color="#dd8452", linestyle="--", zorder=1)
    for x, y, point in zip(xs, ys, points):
        axis.annotate(point["ref"], (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7)
    if _wide(xs):
        axis.set_xscale("log")
    if _wide(ys):
        axis.set_yscale("log")
    axis.set_xlabel(f"{_label(x_metric)}, {panel['x']['better']} is better", fontsize=8)
    axis.set_ylabel(f"{_label(y_metric)}, {panel['y']['better']} is better", fontsize=8)
    title = f"{y_metric} vs {_label(x_metric)}"
    if panel["left_out"]:
        title += f"\nnot shown (no value): {_refs([entry['ref'] for entry in panel['left_out']])}"
    axis.set_title(title, fontsize=9)
    axis.tick_params(labelsize=7)
    axis.legend(fontsize=7, loc="best")
    axis.grid(alpha=0.3)


def _draw_bars(axis, panel: dict, refs: list[str]) -> None:
    metric = panel["metric"]
    values = [panel["values"].get(ref) for ref in refs]
    shown = [_scaled(metric, v) if v is not None else 0.0 for v in values]
    positions = list(range(len(refs)))
    bars = axis.barh(positions, shown, color=["#4c72b0" if v is not None else "#dddddd" for v in values])
    axis.set_yticks(positions, refs, fontsize=8)
    axis.invert_yaxis()
    title = f"{_label(metric)}  ({panel['better']} is better)"
    if _wide(_scaled(metric, v) for v in values if v is not None):
        axis.set_xscale("log")
        title += ", log scale"
    axis.set_title(title, fontsize=9)
    axis.tick_params(axis="x", labelsize=7)
    for bar, value, scaled in zip(bars, values, shown):
        axis.annotate("-" if value is None else f"{scaled:,.4g}", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                      xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)


def draw(comparison: dict, destination: Path) -> Path:
    """The variants chart: the scatter panels in the first row, then the bar panels, two a row."""
    plt = _pyplot()
    refs = [r["ref"] for r in comparison["variants"]]
    scatters = [p for p in comparison["panels"] if p["kind"] == "scatter"]
    bars = [p for p in comparison["panels"] if p["kind"] == "bar"]
    # A quality-against-cost panel that could not be drawn says why in its place.
    missing = [o for o in comparison["omitted_panels"] if o["kind"] == "scatter"]
    columns = 2
    scatter_rows = (len(scatters) + len(missing) + columns - 1) // columns
    bar_rows = (len(bars) + columns - 1) // columns
    bar_height = max(1.2, 0.35 * len(refs) + 0.8)
    # A row of messages only (no scatter drawn in it) needs a line of text, not a plot's height.
    heights = [4.5 if row * columns < len(scatters) else 0.8 for row in range(scatter_rows)] + [bar_height] * bar_rows
    figure, axes = plt.subplots(len(heights), columns, figsize=(11, sum(heights)), squeeze=False,
                                gridspec_kw={"height_ratios": heights})
    scatter_axes = list(axes[:scatter_rows].flat)
    bar_axes = list(axes[scatter_rows:].flat)
    for axis, panel in zip(scatter_axes, scatters):
        _draw_scatter(axis, panel)
    for axis, panel in zip(bar_axes, bars):
        _draw_bars(axis, panel, refs)
    for axis in scatter_axes[len(scatters):] + bar_axes[len(bars):]:
        axis.axis("off")
    for axis, omitted in zip(scatter_axes[len(scatters):], missing):
        axis.text(0.5, 0.5, textwrap.fill(f"no {omitted['id']} panel: {omitted['reason']}", 60),
                  ha="center", va="center", fontsize=8, color="#555555", transform=axis.transAxes)
    figure.suptitle("gpt2-registry: " + _refs(refs), fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    return _save(plt, figure, destination)


def draw_versions(comparison: dict, destination: Path) -> Path:
    """The versions chart: the metric over version numbers, each point coloured by the operation that
    made its version (and, for a few versions, labelled with it and its value)."""
    plt = _pyplot()
    (panel,) = comparison["panels"]
    metric = panel["y"]["metric"]
    points = panel["points"]
    figure, axis = plt.subplots(figsize=(11, 4.5))
    versions = [p["version"] for p in points]
    values = [p["y"] for p in points]
    axis.plot(versions, values, color="#9aa9c4", zorder=1)
    palette = plt.get_cmap("tab10").colors
    for index, operation in enumerate(dict.fromkeys(p["operation"] for p in points)):
        made = [p for p in points if p["operation"] == operation]
        axis.scatter([p["version"] for p in made], [p["y"] for p in made], color=palette[index % len(palette)],
                     s=30, zorder=2, label=operation)
    best = next((p for p in points if p["ref"] == panel["best"]), None)
    if best is not None:
        axis.scatter([best["version"]], [best["y"]], facecolor="none", edgecolor="black", s=140, linewidth=1.5,
                     zorder=3, label=f"best: {best['ref']}")
    axis.legend(fontsize=7, loc="best")
    few = len(points) <= LABELLED_VERSIONS
    if few:  # past a few dozen versions the labels would overlap; the colours still tell the operations
        for point in points:
            axis.annotate(f"{point['operation']}\n{point['y']:,.4g}", (point["version"], point["y"]), xytext=(0, 9),
                          textcoords="offset points", ha="center", fontsize=7)
        # Every version its tick, so one without a value shows as a gap in the line.
        axis.set_xticks(sorted(versions + [entry["version"] for entry in panel["left_out"]]))
    else:
        from matplotlib.ticker import MaxNLocator

        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.margins(x=0.05, y=0.15)  # room for the labels above the highest point
    if _wide(values):
        axis.set_yscale("log")
    axis.set_xlabel("version", fontsize=8)
    axis.set_ylabel(f"{metric}, {panel['y']['better']} is better", fontsize=8)
    title = f"{comparison['model']}: {metric} by version"
    lacking = [str(entry["version"]) for entry in panel["left_out"]]
    if lacking:
        shown_lacking = ", ".join(lacking[:10]) + (f" and {len(lacking) - 10} more" if len(lacking) > 10 else "")
        title += f"  (no value, not shown: version{'s' if len(lacking) > 1 else ''} {shown_lacking})"
    axis.set_title(title, fontsize=10)
    axis.tick_params(labelsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return _save(plt, figure, destination)


def _save(plt, figure, destination: Path) -> Path:
    destination.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(destination, dpi=110)
    plt.close(figure)
    return destination


# ---------------------------------------------------------------- the two comparisons


def compare(variants, *, metric: str | None = None, tracker=None, chart: str | Path | None = None) -> dict:
    """The comparison of `variants` (`table`, with the chart's panels) and its chart; logged as an MLflow
    run of its own when a `tracker` is given, and the chart copied to `chart` when one is named.

    `metric` is the quality axis of the scatter panels (default: perplexity, where any variant holds it).
    """
    distinct = list({v.ref: v for v in variants}.values())
    if len(distinct) < 2:
        only = distinct[0].ref if distinct else "nothing"
        name = distinct[0].name if distinct else "NAME"
        raise UsageError(f"compare needs two or more variants, got {only}: name another REF, "
                         f"or use `gpt2reg compare {name} --versions` to compare the versions of {name}")
    quality = choose_metric(distinct, metric, "variant among " + _refs([v.ref for v in distinct]))
    document = {"compared": "variants", **table(distinct), "quality_metric": quality}
    chart_of_variants(document, quality)
    refs = ", ".join(v.ref for v in distinct)
    return _deliver(document, draw, tracker=tracker, chart=chart, run_name=f"compare {refs}", tag=refs)


def compare_versions(name: str, versions, *, metric: str | None = None, tracker=None,
                     chart: str | Path | None = None) -> dict:
    """One metric over the versions (`versions`, every version of the model `name`) as a line chart,
    logged and copied as `compare` does. `metric` defaults to perplexity."""
    versions = sorted(versions, key=lambda v: v.version)
    if len(versions) < 2:
        only = versions[0].ref if versions else name
        raise UsageError(f"{name} has one version ({only}), so there is nothing to compare it across; "
                         f"make another version under --name {name}, or compare it with other refs")
    asked = metric if metric is not None else DEFAULT_QUALITY_METRIC
    chosen = choose_metric(versions, asked, f"version of {name}")
    document = {"compared": "versions", "model": name, **table(versions), "quality_metric": chosen}
    series = version_series(document["variants"], chosen)
    document.update(panels=[series], fronts={}, omitted_panels=[])
    refs = ", ".join(v.ref for v in versions)
    return _deliver(document, draw_versions, tracker=tracker, chart=chart,
                    run_name=f"compare {name} versions: {chosen}", tag=refs)


def _deliver(document: dict, drawer, *, tracker, chart, run_name: str, tag: str) -> dict:
    """Draw the chart, write it and the document beside it; copy the chart to `chart`; log both as a run."""
    import json
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gpt2reg-compare-") as scratch:
        folder = Path(scratch)
        picture = drawer(document, folder / "comparison.png")
        (folder / "comparison.json").write_text(json.dumps(document, indent=2, default=str), encoding="utf-8")
        if chart is not None:
            destination = Path(chart).expanduser()
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(picture, destination)
            document["chart_file"] = str(destination)
        if tracker is not None:
            from registry.tracking import TAG_PREFIX

            # Cut as MLflow's limits on a run name and a tag value require (a model of many versions).
            run = tracker.start_run(run_name=run_name[:250], tags={f"{TAG_PREFIX}comparison": tag[:5000]})
            try:
                tracker.log_artifacts(run.info.run_id, folder, "comparison")
            finally:
                tracker.finish_run(run.info.run_id)
            document.update(run_id=run.info.run_id, chart_uri=f"{run.info.artifact_uri}/comparison/comparison.png")
    return document
