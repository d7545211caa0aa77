"""A variant's model card in Hugging Face's format: the README.md a Hub repository shows.

`model_card(variant, graph)` writes YAML front matter as the Hub defines model cards
(https://huggingface.co/docs/hub/model-cards), built with huggingface_hub's own
`ModelCardData` and `EvalResult`, and a Markdown body: what the variant is, how it was
made, its lineage from the oldest ancestor down to it with the change of each figure on
every step, its data sets and figures, and how to load it.

The front matter holds:

- ``library_name: keras-hub``, ``pipeline_tag: text-generation``, ``tags`` (gpt2, the
  operation, gpt2-registry);
- ``base_model``: the parents' refs (`NAME/VERSION`); a parent that was imported from
  the Hugging Face Hub (`hf://owner/name`) with no parent of its own appears as its Hub id;
- ``base_model_relation``: the Hub's word for the operation where it has one (`finetune`,
  `adapter` for lora, `merge`, `quantized` for quantize); none for create and import;
- ``gpt2_registry``: our own facts the Hub has no field for: ref, kind, operation, the
  relation in our words for every variant with parents (`distillation`, `format-conversion`
  for export, the operation's own name for a plugin's), the parents with their roles, the
  content hash, and the Hub source of an import;
- ``datasets``: the names of the training and validation data sets;
- ``model-index``: one result per figure, with the data set it was measured on where known.

Nothing here reads a store: the caller passes the variant, its lineage graph (ancestors at
least) and what it knows of data sets and evaluations.

Example:
    >>> from huggingface_hub import ModelCard
    >>> from registry import Registry
    >>> from registry.model_card import model_card
    >>> reg = Registry("mlruns")
    >>> card = ModelCard(model_card(reg.get("quickstart-finetune/1"),
    ...                             reg.lineage_graph("quickstart-finetune/1", descendants=False)))
    >>> card.data.base_model, card.data.base_model_relation
    ('quickstart/1', 'finetune')
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from registry.comparison import LEADING_METRICS, NOT_COMPARED
from registry.lineage_graph import LineageEdge, LineageGraph, LineageNode
from registry.rendering import human_size
from registry.variant import Variant

LIBRARY_NAME = "keras-hub"
PIPELINE_TAG = "text-generation"
REGISTRY_TAG = "gpt2-registry"
OWN_FIELD = "gpt2_registry"  # our facts in the front matter, beside the Hub's own fields
TASK_TYPE = "text-generation"
UNKNOWN_DATASET = "unknown"  # a figure recorded without its data set (the model-index requires one)

# The Hub's `base_model_relation` values (https://huggingface.co/docs/hub/model-cards).
HUB_RELATIONS = {"finetune": "finetune", "lora": "adapter", "merge": "merge", "quantize": "quantized"}
# Our words where the Hub has none; a plugin's own operation is its own word.
OWN_RELATIONS = {"distill": "distillation", "export": "format-conversion"}

# Figures that describe speed, or compare the variant with another model, rather than its
# quality on some data: left out of the model-index (the body's table of figures keeps them).
NOT_QUALITY = NOT_COMPARED | {"speedup", "parameter_compression", "trainable_share", "teacher_perplexity",
                              "max_abs_logit_diff", "merge_max_abs_logit_diff", "top1_agreement"}
SPEED_SUFFIX = "tokens_per_second"
# Figures whose deltas read best after the quality ones: the size of the model.
SIZE_FIGURES = ("parameters", "size_bytes")
TRAINING_CONTEXTS = ("training", "validation")
# A family deeper than this shows its oldest variant and the newest steps down to the card's.
LINEAGE_STEPS_SHOWN = 40
LONGEST_CELL = 160  # characters of one setting's value in the body's tables


def model_card(variant: Variant, graph: LineageGraph, *, datasets: Iterable[Mapping[str, Any]] = (),
               evaluations: Iterable[Mapping[str, Any]] = ()) -> str:
    """The model card of `variant` (README.md text: YAML front matter, then Markdown).

    Args:
        variant: the variant the card describes.
        graph: its family, ancestors at least (`Registry.lineage_graph(ref, descendants=False)`);
            nodes and edges beyond its ancestors are ignored.
        datasets: data sets it was trained, validated or evaluated on, each
            ``{"name", "digest", "source", "context": "training" | "validation" | "evaluation",
            "rows", "bytes"}``.
        evaluations: figures with the data set each was measured on, ``{"metric", "value",
            "dataset": <as in datasets> | None}``; when none are given, the variant's own
            quality figures (`recorded_evaluations`), their data sets not recorded.

    Example:
        >>> text = model_card(variant, graph, evaluations=[
        ...     {"metric": "perplexity", "value": 48.3, "dataset": {"name": "eval.txt", "digest": "9f2c",
        ...      "source": "eval.txt", "context": "evaluation", "rows": 12, "bytes": 4096}}])
        >>> text.startswith("---\\nbase_model:")
        True
    """
    datasets = [dict(d) for d in datasets]
    evaluations = [dict(e) for e in evaluations] or recorded_evaluations(variant)
    family = _Family(variant, graph)
    front = _front_matter(variant, family, datasets, evaluations)
    body = "\n".join([
        f"# {variant.ref}",
        "",
        _summary(variant, family),
        "",
        *_section("Variant", _variant_table(variant)),
        *_section("How it was made", _making(variant, family)),
        *_section("Lineage", _lineage(family)),
        *_section("Evaluation", _evaluation_table(evaluations)),
        *_section("Data sets", _dataset_table(datasets)),
        *_section("How to load", _how_to_load(variant)),
    ])
    return f"---\n{front}---\n\n{body}"


def recorded_evaluations(variant: Variant) -> list[dict[str, Any]]:
    """The variant's own quality figures (perplexity, task metrics such as ``hellaswag.accuracy``)
    as evaluations whose data set was not recorded with them."""
    return [{"metric": name, "value": value, "dataset": None}
            for name, value in _ordered(variant.metrics.items()) if is_quality_metric(name)]


def is_quality_metric(name: str) -> bool:
    """Whether a figure measures the model on data (perplexity, accuracy, a loss), rather than
    bookkeeping (parameters, size), speed, or agreement with another model."""
    return name not in NOT_QUALITY and not name.endswith(SPEED_SUFFIX)


def datasets_from_lineage(graph: LineageGraph, ref: str) -> list[dict[str, Any]]:
    """The data sets the operation that made `ref` recorded in its lineage settings: their
    descriptions under ``datasets`` where the edge keeps them, else the files it named as
    ``data`` (training) and ``val_data`` (validation), by file name and without a digest."""
    found: list[dict[str, Any]] = []

    def add(entry: dict[str, Any]) -> None:
        if entry not in found:
            found.append(entry)

    for edge in graph.parents(ref):
        settings = edge.settings or {}
        described = [d for d in settings.get("datasets") or () if isinstance(d, Mapping) and d.get("name")]
        for description in described:
            add({key: description.get(key) for key in ("name", "digest", "source", "context", "rows", "bytes")})
        if described:
            continue
        for key, context in (("data", "training"), ("val_data", "validation")):
            for source in settings.get(key) or ():
                add({"name": Path(str(source)).name or str(source), "digest": None, "source": str(source),
                     "context": context, "rows": None, "bytes": None})
    return found


def hub_relation(operation: str) -> str | None:
    """The Hub's `base_model_relation` for an operation, or None where the Hub has no word for it."""
    return HUB_RELATIONS.get(operation)


def own_relation(operation: str) -> str:
    """How a variant relates to its parents, in our words (the Hub's where it has one)."""
    return HUB_RELATIONS.get(operation) or OWN_RELATIONS.get(operation) or operation


def hub_source(node: LineageNode, edges_in: Sequence[LineageEdge] = ()) -> str | None:
    """The `hf://owner/name` handle an imported variant came from, when its tags or its import's
    settings record one."""
    document = node.document or {}
    candidates = [(document.get("tags") or {}).get("source")]
    candidates += [(edge.settings or {}).get("source") for edge in edges_in if edge.operation == "import"]
    for candidate in candidates:
        if isinstance(candidate, str) and _hub_id(candidate):
            return candidate
    return None


def _hub_id(handle: str) -> str | None:
    """`hf://owner/name[@revision]` -> `owner/name`; None for anything else."""
    from backends.hub_sources import HF_SCHEME, parse_hf_handle
    from registry.errors import UsageError

    if not handle.startswith(HF_SCHEME):
        return None
    try:
        return parse_hf_handle(handle)[0]
    except UsageError:
        return None


class _Family:
    """The card's variant and its ancestors, read from the graph once."""

    def __init__(self, variant: Variant, graph: LineageGraph):
        self.variant = variant
        self.nodes = dict(graph.nodes)
        self.nodes.setdefault(variant.ref, LineageNode.of(variant))
        self.edges_in: dict[str, list[LineageEdge]] = {}
        for edge in graph.edges:
            self.edges_in.setdefault(edge.child, []).append(edge)
        self.order = self._ancestors_first(variant.ref)

    def _ancestors_first(self, ref: str) -> list[str]:
        """`ref` and its ancestors, each after its parents (a stack, not recursion: families run deep)."""
        order, done, stack = [], set(), [(ref, False)]
        while stack:
            current, parents_done = stack.pop()
            if current in done:
                continue
            if parents_done:
                done.add(current)
                order.append(current)
                continue
            stack.append((current, True))
            for edge in reversed(self.edges_in.get(current, [])):
                if edge.parent not in done:
                    stack.append((edge.parent, False))
        return order

    def parent_edges(self, ref: str) -> list[LineageEdge]:
        return self.edges_in.get(ref, [])

    def node(self, ref: str) -> LineageNode:
        return self.nodes.get(ref) or LineageNode(ref=ref, operation="?")

    def hub_source(self, ref: str) -> str | None:
        return hub_source(self.node(ref), self.parent_edges(ref))

    def base_model(self, ref: str) -> str:
        """How the card names a parent: its Hub id when it is a Hub import with no parent of its own."""
        source = self.hub_source(ref)
        if source and not self.parent_edges(ref):
            return _hub_id(source) or ref
        return ref


# ---------------------------------------------------------------- front matter


def _front_matter(variant: Variant, family: _Family, datasets: list[dict], evaluations: list[dict]) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    parents = [(edge.parent, edge.role) for edge in family.parent_edges(variant.ref)] or \
        [(ref, "parent") for ref in variant.parents]
    base_models = list(dict.fromkeys(family.base_model(ref) for ref, _ in parents))
    own: dict[str, Any] = {"ref": variant.ref, "kind": variant.kind, "operation": variant.operation}
    if parents:
        own["relation"] = own_relation(variant.operation)
        own["parents"] = [{"ref": ref, "role": role} for ref, role in parents]
    source = family.hub_source(variant.ref)
    if source:
        own["source"] = source
    own["content_hash"] = variant.content_hash
    results = []
    for evaluation in evaluations:
        value = evaluation.get("value")
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            continue  # the Hub's schema takes numbers; the body's table still shows it
        dataset = evaluation.get("dataset") or {}
        name = dataset.get("name") or UNKNOWN_DATASET
        results.append(EvalResult(task_type=TASK_TYPE, dataset_type=name, dataset_name=name,
                                  dataset_revision=dataset.get("digest") or None,
                                  metric_type=str(evaluation["metric"]), metric_value=float(value)))
    data = ModelCardData(
        library_name=LIBRARY_NAME,
        pipeline_tag=PIPELINE_TAG,
        tags=list(dict.fromkeys(["gpt2", variant.operation, REGISTRY_TAG])),
        base_model=(base_models[0] if len(base_models) == 1 else base_models) or None,
        datasets=list(dict.fromkeys(d["name"] for d in datasets
                                    if d.get("name") and d.get("context") in TRAINING_CONTEXTS)) or None,
        model_name=variant.ref if results else None,
        eval_results=results or None,
        **({"base_model_relation": hub_relation(variant.operation)} if parents and hub_relation(variant.operation)
           else {}),
        **{OWN_FIELD: own},
    )
    return data.to_yaml() + "\n"


# ---------------------------------------------------------------- body


def _section(title: str, lines: list[str]) -> list[str]:
    return [f"## {title}", "", *lines, ""] if lines else []


def _summary(variant: Variant, family: _Family) -> str:
    parents = family.parent_edges(variant.ref)
    what = {"full": "A GPT-2 model (a KerasHub `GPT2CausalLM`)",
            "adapter": "A LoRA adapter over a GPT-2 model (a KerasHub `GPT2CausalLM`)",
            "export": "An export of a GPT-2 model"}.get(variant.kind, f"A GPT-2 variant of kind {variant.kind}")
    if parents:
        made = f"made by `{variant.operation}` from " + ", ".join(
            f"`{e.parent}`" + (f" ({e.role})" if e.role != "parent" else "") for e in parents)
    else:
        made = f"made by `{variant.operation}`, with no parent"
    return f"{what} registered in gpt2-registry as `{variant.ref}`, {made}."


def _variant_table(variant: Variant) -> list[str]:
    rows = [("Ref", f"`{variant.ref}`"), ("MLflow model", f"`{variant.uri}`"), ("Kind", variant.kind),
            ("Operation", variant.operation),
            ("Parents", ", ".join(f"`{p}`" for p in variant.parents) or "none"),
            ("Parameters", f"{variant.parameters:,}"),
            ("Size", f"{human_size(variant.size_bytes)} ({variant.size_bytes:,} bytes)"),
            ("Content hash", f"`sha256:{variant.content_hash}` (over its weight files)")]
    if variant.created_at is not None:
        created = variant.created_at.isoformat() if hasattr(variant.created_at, "isoformat") else variant.created_at
        rows.append(("Created", str(created)))
    config = variant.config or {}
    shape = [f"{config[key]} {label}" for key, label in (("num_layers", "layers"), ("num_heads", "heads"),
                                                          ("hidden_dim", "wide"), ("max_sequence_length", "positions"),
                                                          ("vocabulary_size", "tokens in the vocabulary"))
             if key in config]
    if shape:
        rows.append(("Architecture", ", ".join(shape)))
    for key, value in sorted((variant.tags or {}).items()):
        if key != "operation":
            rows.append((f"Tag `{key}`", _cell(value)))
    lines = ["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]
    if variant.metrics:
        lines += ["", "Recorded figures:", "", "| figure | value |", "|---|---|"]
        lines += [f"| {name} | {_number(value)} |" for name, value in _ordered(variant.metrics.items())]
    return lines


def _making(variant: Variant, family: _Family) -> list[str]:
    edges = family.parent_edges(variant.ref)
    if not edges:
        source = family.hub_source(variant.ref)
        if variant.operation == "import":
            return [f"Imported from `{source}` (Hugging Face Hub `{_hub_id(source)}`)." if source
                    else "Imported; the lineage records no parent for it."]
        if variant.operation == "create":
            return ["Created with freshly initialised weights; it has no parent."]
        return [f"Made by `{variant.operation}`; the lineage records no parent for it."]
    lines = []
    for edge in edges:
        role = f" (as its {edge.role})" if edge.role != "parent" else ""
        lines.append(f"`{edge.operation}` of `{edge.parent}`{role}, with these settings:")
        lines.append("")
        settings = edge.settings or {}
        if settings:
            lines += ["| setting | value |", "|---|---|"]
            lines += [f"| {_cell(key)} | {_cell(value)} |" for key, value in settings.items()]
        else:
            lines.append("(none recorded)")
        lines.append("")
    return lines[:-1]


def _lineage(family: _Family) -> list[str]:
    order = family.order
    lines = ["From the oldest ancestor down to this variant; on each step, every figure the lineage keeps "
             "for it: the parent's value, the child's, and the change (measured on the same data)."]
    lines.append("")
    shown = order if len(order) <= LINEAGE_STEPS_SHOWN + 1 else [order[0], None, *order[-LINEAGE_STEPS_SHOWN:]]
    for ref in shown:
        if ref is None:
            lines.append(f"- … {len(order) - LINEAGE_STEPS_SHOWN - 1} generations between, left out …")
            continue
        node = family.node(ref)
        edges = family.parent_edges(ref)
        marker = " (this variant)" if ref == family.variant.ref else ""
        if not edges:
            source = family.hub_source(ref)
            origin = f", from `{source}`" if source else ""
            lines.append(f"- `{ref}`{marker}: {node.operation}{origin}")
            continue
        for edge in edges:
            role = f" ({edge.role})" if edge.role != "parent" else ""
            changes = "; ".join(_changes(node, edge.metric_deltas or {}))
            lines.append(f"- `{edge.parent}`{role} → `{ref}`{marker}: {edge.operation}"
                         + (f": {changes}" if changes else ""))
    return lines


def _changes(child: LineageNode, deltas: Mapping[str, float]) -> list[str]:
    """`perplexity 62.1 → 48.3 (−13.8)` for each delta on an edge into `child`."""
    figures = dict(child.metrics)
    document = child.document or {}
    for name in SIZE_FIGURES:
        if name not in figures and isinstance(document.get(name), (int, float)):
            figures[name] = document[name]
    if "size_bytes" not in figures and child.size_bytes is not None:
        figures["size_bytes"] = child.size_bytes
    changes = []
    for name, delta in _ordered(deltas.items()):
        after = figures.get(name)
        if isinstance(after, (int, float)) and isinstance(delta, (int, float)):
            changes.append(f"{name} {_number(after - delta)} → {_number(after)} ({_signed(delta)})")
        else:
            changes.append(f"{name} {_signed(delta)}")
    return changes


def _evaluation_table(evaluations: list[dict]) -> list[str]:
    if not evaluations:
        return []
    lines = ["| metric | value | data set | digest |", "|---|---|---|---|"]
    for evaluation in evaluations:
        dataset = evaluation.get("dataset") or {}
        lines.append(f"| {_cell(evaluation.get('metric'))} | {_number(evaluation.get('value'))} | "
                     f"{_cell(dataset.get('name') or 'not recorded')} | {_cell(dataset.get('digest') or '-')} |")
    return lines


def _dataset_table(datasets: list[dict]) -> list[str]:
    if not datasets:
        return []
    lines = ["| data set | context | digest | source | rows | bytes |", "|---|---|---|---|---|---|"]
    for d in datasets:
        rows, size = d.get("rows"), d.get("bytes")
        lines.append(f"| {_cell(d.get('name'))} | {_cell(d.get('context') or '-')} | {_cell(d.get('digest') or '-')} | "
                     f"{_cell(d.get('source') or '-')} | {f'{rows:,}' if isinstance(rows, int) else '-'} | "
                     f"{f'{size:,}' if isinstance(size, int) else '-'} |")
    return lines


def _how_to_load(variant: Variant) -> list[str]:
    ref = variant.ref
    lines = ["From the registry that holds it (`--home`, or `$GPT2REG_HOME`, or `./mlruns`):", "", "```shell"]
    if variant.kind == "export":
        lines += [f"gpt2reg show {ref}", "```", "", "```python", "from registry import Registry",
                  "", f'files = Registry().preset_path("{ref}")  # the exported files', "```"]
        return lines
    lines += [f'gpt2reg generate {ref} "The meaning of life is"', "```", "", "```python",
              "from registry import Registry", "", "reg = Registry()",
              f'lm = reg.get("{ref}").load()  # a keras_hub GPT2CausalLM' +
              (" with the adapter applied to its base" if variant.kind == "adapter" else "")]
    if variant.kind == "full":
        lines += ["", "import mlflow", "", "mlflow.set_tracking_uri(reg.home.tracking_uri)",
                  f'model = mlflow.pyfunc.load_model("{variant.uri}")',
                  'model.predict(["The meaning of life is"])  # generated text']
    lines.append("```")
    return lines


# ---------------------------------------------------------------- formatting


def _ordered(items: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Figures in reading order: the leading quality and speed figures, the rest by name, sizes last."""
    items = dict(items)
    leading = [name for name in LEADING_METRICS if name in items]
    last = [name for name in SIZE_FIGURES if name in items]
    rest = sorted(set(items) - set(leading) - set(last))
    return [(name, items[name]) for name in (*leading, *rest, *last)]


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _cell(value)
    if not math.isfinite(value):
        return str(value)
    if float(value).is_integer() and abs(value) >= 100:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.1f}"
    return f"{value:.4g}"


def _signed(delta: Any) -> str:
    if not isinstance(delta, (int, float)) or isinstance(delta, bool):
        return _cell(delta)
    text = _number(abs(delta))
    return f"−{text}" if delta < 0 else f"+{text}"


def _cell(value: Any) -> str:
    """A value as one Markdown table cell: JSON for structures, one line, pipes escaped, bounded."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= LONGEST_CELL else text[:LONGEST_CELL - 1] + "…"
