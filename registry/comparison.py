"""`gpt2reg compare`: variants side by side, as a table, a JSON document and a chart.

The chart (PNG, matplotlib without a display) has one horizontal bar panel
per figure (size, parameters, then each metric that at least one variant
holds), so a family's trade-offs (smaller, slower, worse perplexity) read
at a glance. It is logged to MLflow as a comparison run with the table.
"""

from __future__ import annotations

from pathlib import Path

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


def higher_is_better(metric: str) -> bool:
    return metric.rsplit(".", 1)[-1] in HIGHER_IS_BETTER


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


def draw(comparison: dict, destination: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = comparison["variants"]
    panels = [("size (MB)", [r["size_bytes"] / 1e6 for r in rows], False),
              ("parameters (M)", [r["parameters"] / 1e6 for r in rows], False)]
    for metric in comparison["metrics"]:
        values = [r["metrics"].get(metric) for r in rows]
        panels.append((metric + ("  (higher is better)" if higher_is_better(metric) else "  (lower is better)"),
                       values, True))
    columns = 2
    panel_rows = (len(panels) + columns - 1) // columns
    height = max(1.2, 0.35 * len(rows) + 0.8)
    figure, axes = plt.subplots(panel_rows, columns, figsize=(11, height * panel_rows), squeeze=False)
    labels = [r["ref"] for r in rows]
    positions = range(len(rows))
    for axis, (title, values, _) in zip(axes.flat, panels):
        shown = [v if v is not None else 0.0 for v in values]
        bars = axis.barh(list(positions), shown, color=["#4c72b0" if v is not None else "#dddddd" for v in values])
        axis.set_yticks(list(positions), labels, fontsize=8)
        axis.invert_yaxis()
        axis.set_title(title, fontsize=9)
        present = [v for v in values if v is not None and v > 0]
        if len(present) > 1 and max(present) / min(present) > 100:
            axis.set_xscale("log")  # a random-weights perplexity beside trained ones
            axis.set_title(title + ", log scale", fontsize=9)
        axis.tick_params(axis="x", labelsize=7)
        for bar, value in zip(bars, values):
            axis.annotate("-" if value is None else f"{value:,.4g}", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                          xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    figure.suptitle("gpt2-registry: " + ", ".join(labels), fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    destination.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(destination, dpi=110)
    plt.close(figure)
    return destination


def compare(variants, *, tracker=None, chart: str | Path | None = None) -> dict:
    """The comparison of `variants` (`table`) with its chart; logged as an MLflow run of its own
    when a `tracker` is given, and the chart copied to `chart` when one is named."""
    import json
    import shutil
    import tempfile

    document = table(variants)
    with tempfile.TemporaryDirectory(prefix="gpt2reg-compare-") as scratch:
        folder = Path(scratch)
        picture = draw(document, folder / "comparison.png")
        (folder / "comparison.json").write_text(json.dumps(document, indent=2, default=str), encoding="utf-8")
        if chart is not None:
            destination = Path(chart).expanduser()
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(picture, destination)
            document["chart_file"] = str(destination)
        if tracker is not None:
            from registry.tracking import TAG_PREFIX

            refs = ", ".join(v.ref for v in variants)
            run = tracker.start_run(run_name=f"compare {refs}"[:250], tags={f"{TAG_PREFIX}comparison": refs})
            try:
                tracker.log_artifacts(run.info.run_id, folder, "comparison")
            finally:
                tracker.finish_run(run.info.run_id)
            document.update(run_id=run.info.run_id, chart_uri=f"{run.info.artifact_uri}/comparison/comparison.png")
    return document
