"""Model cards: every front-matter field read back with huggingface_hub's own parser, and the body's lineage.

The families are made by hand (`Variant`, `LineageGraph`), or registered as store-only stamps and
read through `Registry`; no model is built.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from huggingface_hub import ModelCard

from registry.lineage_graph import LineageEdge, LineageGraph, LineageNode
from registry.model_card import datasets_from_lineage, model_card
from registry.variant import Variant
from tests.registry import store_only_plugin

CONFIG = {"num_layers": 2, "num_heads": 4, "hidden_dim": 64, "max_sequence_length": 128, "vocabulary_size": 50257}
TRAIN = {"name": "shakespeare.txt", "digest": "9f2c0a1b", "source": "/data/shakespeare.txt", "context": "training",
         "rows": 1200, "bytes": 58210}
VALIDATION = {"name": "held-out.txt", "digest": "77aa01cd", "source": "/data/held-out.txt", "context": "validation",
              "rows": 100, "bytes": 4100}
EVALUATION = {"name": "wiki.txt", "digest": "0be1d2c3", "source": "/data/wiki.txt", "context": "evaluation",
              "rows": 40, "bytes": 9000}


def variant(ref: str, operation: str, parents=(), metrics=None, *, kind="full", tags=None, size=4_938_000) -> Variant:
    name, version = ref.rsplit("/", 1)
    return Variant(name=name, version=int(version), kind=kind, operation=operation, parents=tuple(parents),
                   parameters=1_234_567, size_bytes=size, content_hash="c0ffee" + "0" * 58, run_id=None,
                   artifact_uri=None, metrics={"parameters": 1_234_567.0, "size_bytes": float(size), **(metrics or {})},
                   config=CONFIG, tags={"operation": operation, **(tags or {})},
                   created_at=datetime(2025, 1, 2, tzinfo=timezone.utc))


class Family:
    """A hand-made lineage: variants by ref and the edges among them."""

    def __init__(self):
        self.variants: dict[str, Variant] = {}
        self.edges: list[LineageEdge] = []

    def add(self, ref, operation, parents=(), metrics=None, *, settings=None, deltas=None, **fields) -> Variant:
        """`parents`: refs, or (ref, role) pairs."""
        pairs = [(p, "parent") if isinstance(p, str) else p for p in parents]
        made = variant(ref, operation, [p for p, _ in pairs], metrics, **fields)
        self.variants[ref] = made
        for parent, role in pairs:
            self.edges.append(LineageEdge(parent=parent, child=ref, operation=operation, role=role,
                                          settings=settings or {}, metric_deltas=deltas or {}))
        return made

    def graph(self, root: str) -> LineageGraph:
        return LineageGraph(root=root, nodes={ref: LineageNode.of(v) for ref, v in self.variants.items()},
                            edges=list(self.edges))

    def card(self, ref: str, **inputs) -> ModelCard:
        text = model_card(self.variants[ref], self.graph(ref), **inputs)
        return ModelCard(text)


@pytest.fixture
def family() -> Family:
    """openai-community/gpt2 imported from the Hub, and every built-in operation below it."""
    f = Family()
    f.add("gpt2/1", "import", metrics={"perplexity": 62.1}, tags={"source": "hf://openai-community/gpt2@main"})
    f.add("bard/1", "finetune", ["gpt2/1"], {"perplexity": 48.3, "tokens_per_second": 900.0},
          settings={"lr": 3e-4, "steps": 100, "data": ["/data/shakespeare.txt"], "val_data": ["/data/held-out.txt"]},
          deltas={"perplexity": -13.8, "size_bytes": 0.0, "parameters": 0.0})
    f.add("bard-lora/1", "lora", ["bard/1"], {"perplexity": 45.0}, kind="adapter", size=120_000,
          settings={"rank": 8, "alpha": 16}, deltas={"perplexity": -3.3, "size_bytes": -4_818_000.0})
    f.add("bard-merge/1", "merge", ["bard-lora/1"], {"perplexity": 45.0},
          settings={"adapter": "bard-lora/1", "base": "bard/1"}, deltas={"size_bytes": 4_818_000.0})
    f.add("bard-int8/1", "quantize", ["bard-merge/1"], {"perplexity": 45.4, "greedy_tokens_per_second": 80.0},
          settings={"mode": "int8"}, deltas={"perplexity": 0.4}, size=1_400_000, tags={"quantization": "int8"})
    f.add("small/1", "create", metrics={"perplexity": 50_000.0})
    f.add("student/1", "distill", [("bard/1", "teacher"), ("small/1", "student_init")],
          {"perplexity": 70.2, "teacher_perplexity": 48.3, "parameter_compression": 3.0},
          settings={"temperature": 2.0, "alpha": 0.5}, deltas={"perplexity": 21.9})
    f.add("bard-onnx/1", "export", ["bard/1"], {"perplexity": 48.3, "top1_agreement": 1.0}, kind="export",
          settings={"format": "onnx"}, tags={"format": "onnx"})
    f.add("bard-pruned/1", "prune", ["bard/1"], {"perplexity": 51.0}, settings={"sparsity": 0.5})
    return f


# operation -> (base_model, the Hub's base_model_relation, our own relation)
EXPECTED = {
    "bard/1": ("openai-community/gpt2", "finetune", "finetune"),
    "bard-lora/1": ("bard/1", "adapter", "adapter"),
    "bard-merge/1": ("bard-lora/1", "merge", "merge"),
    "bard-int8/1": ("bard-merge/1", "quantized", "quantized"),
    "student/1": (["bard/1", "small/1"], None, "distillation"),
    "bard-onnx/1": ("bard/1", None, "format-conversion"),
    "bard-pruned/1": ("bard/1", None, "prune"),
}


@pytest.mark.parametrize("ref", list(EXPECTED))
def test_each_operation_names_its_base_model_and_relation(family, ref):
    base_model, hub_relation, own_relation = EXPECTED[ref]
    data = family.card(ref).data
    assert data.base_model == base_model
    assert getattr(data, "base_model_relation", None) == hub_relation
    own = data.gpt2_registry
    assert own["relation"] == own_relation and own["operation"] == family.variants[ref].operation
    assert own["ref"] == ref and own["kind"] == family.variants[ref].kind
    assert own["content_hash"] == family.variants[ref].content_hash
    assert [p["ref"] for p in own["parents"]] == list(family.variants[ref].parents)
    assert data.library_name == "keras-hub" and data.pipeline_tag == "text-generation"
    assert data.tags == list(dict.fromkeys(["gpt2", family.variants[ref].operation, "gpt2-registry"]))


def test_a_distillation_keeps_each_parents_role(family):
    own = family.card("student/1").data.gpt2_registry
    assert own["parents"] == [{"ref": "bard/1", "role": "teacher"}, {"ref": "small/1", "role": "student_init"}]


@pytest.mark.parametrize("ref, source", [("gpt2/1", "hf://openai-community/gpt2@main"), ("small/1", None)])
def test_a_root_has_no_base_model_and_an_import_keeps_its_hub_source(family, ref, source):
    data = family.card(ref).data
    assert data.base_model is None and getattr(data, "base_model_relation", None) is None
    own = data.gpt2_registry
    assert "relation" not in own and "parents" not in own and own.get("source") == source


def test_a_parent_below_the_hub_import_is_named_by_its_ref(family):
    # Only the imported root stands for a Hub model; its descendants are the registry's own.
    family.add("bard-2/1", "finetune", ["bard/1"], {"perplexity": 40.0})
    assert family.card("bard-2/1").data.base_model == "bard/1"


def test_a_hub_source_recorded_on_the_import_edge_names_the_root_too():
    f = Family()
    f.add("gpt2/1", "import")
    f.edges.append(LineageEdge(parent="elsewhere/1", child="gpt2/1", operation="import", role="source",
                               settings={"source": "hf://openai-community/gpt2"}))
    f.add("tuned/1", "finetune", ["gpt2/1"])
    # gpt2/1 has a parent of its own, so it is a registry variant, not the Hub's model.
    assert f.card("tuned/1").data.base_model == "gpt2/1"
    f.edges.pop(0)
    f.variants["gpt2/1"] = variant("gpt2/1", "import", tags={"source": "hf://openai-community/gpt2"})
    assert f.card("tuned/1").data.base_model == "openai-community/gpt2"


def test_datasets_and_evaluations_fill_the_front_matter(family):
    evaluations = [{"metric": "perplexity", "value": 48.3, "dataset": EVALUATION},
                   {"metric": "hellaswag.accuracy", "value": 0.31, "dataset": VALIDATION},
                   {"metric": "bleu", "value": 12.5, "dataset": None}]
    card = family.card("bard/1", datasets=[TRAIN, VALIDATION, EVALUATION], evaluations=evaluations)
    data = card.data
    # The data sets it learned from; evaluation data is named in the model-index instead.
    assert data.datasets == ["shakespeare.txt", "held-out.txt"]
    assert data.model_name == "bard/1"
    results = [(r.task_type, r.metric_type, r.metric_value, r.dataset_name, r.dataset_type, r.dataset_revision)
               for r in data.eval_results]
    assert results == [("text-generation", "perplexity", 48.3, "wiki.txt", "wiki.txt", "0be1d2c3"),
                       ("text-generation", "hellaswag.accuracy", 0.31, "held-out.txt", "held-out.txt", "77aa01cd"),
                       ("text-generation", "bleu", 12.5, "unknown", "unknown", None)]
    for dataset in (TRAIN, VALIDATION, EVALUATION):
        row = next(line for line in card.text.splitlines() if line.startswith(f"| {dataset['name']} |"))
        assert dataset["digest"] in row and dataset["context"] in row and dataset["source"] in row


def test_without_evaluations_the_variants_own_quality_figures_are_its_results(family):
    family.variants["bard/1"].metrics.update({"hellaswag.accuracy": 0.31, "train_loss": 3.2, "train_steps": 100.0})
    data = family.card("bard/1").data
    # Not parameters, size, training throughput or bookkeeping: figures of quality only.
    assert [(r.metric_type, r.metric_value, r.dataset_name) for r in data.eval_results] == [
        ("perplexity", 48.3, "unknown"), ("hellaswag.accuracy", 0.31, "unknown")]
    student = family.card("student/1").data
    # The teacher's perplexity and the compression describe other models, not this one's quality.
    assert [r.metric_type for r in student.eval_results] == ["perplexity"]


def test_a_variant_with_no_quality_figure_has_no_model_index():
    f = Family()
    f.add("new/1", "create")
    data = f.card("new/1").data
    assert data.eval_results is None and data.datasets is None


def test_the_body_walks_the_lineage_from_the_root_with_each_steps_deltas(family):
    text = family.card("bard-int8/1").text
    lineage = text.split("## Lineage", 1)[1].split("\n## ", 1)[0]
    steps = [line for line in lineage.splitlines() if line.startswith("- ")]
    assert steps == [
        "- `gpt2/1`: import, from `hf://openai-community/gpt2@main`",
        "- `gpt2/1` → `bard/1`: finetune: perplexity 62.1 → 48.3 (−13.8); parameters 1,234,567 → 1,234,567 (+0); "
        "size_bytes 4,938,000 → 4,938,000 (+0)",
        "- `bard/1` → `bard-lora/1`: lora: perplexity 48.3 → 45 (−3.3); size_bytes 4,938,000 → 120,000 (−4,818,000)",
        "- `bard-lora/1` → `bard-merge/1`: merge: size_bytes 120,000 → 4,938,000 (+4,818,000)",
        "- `bard-merge/1` → `bard-int8/1` (this variant): quantize: perplexity 45 → 45.4 (+0.4)",
    ]


def test_the_body_says_what_the_variant_is_how_it_was_made_and_how_to_load_it(family):
    text = family.card("bard/1").text
    for fact in ("`bard/1`", "`models:/bard/1`", "1,234,567", "4.9 MB (4,938,000 bytes)",
                 "sha256:c0ffee", "2 layers, 4 heads, 64 wide, 128 positions"):
        assert fact in text, fact
    made = text.split("## How it was made", 1)[1].split("\n## ", 1)[0]
    assert "`finetune` of `gpt2/1`" in made
    assert "| lr | 0.0003 |" in made and "| steps | 100 |" in made
    load = text.split("## How to load", 1)[1]
    assert 'gpt2reg generate bard/1' in load and 'Registry()' in load
    assert 'mlflow.pyfunc.load_model("models:/bard/1")' in load
    # An adapter and an export are not MLflow pyfunc models.
    assert "mlflow.pyfunc" not in family.card("bard-lora/1").text
    assert "mlflow.pyfunc" not in family.card("bard-onnx/1").text


def test_a_distillation_shows_both_parents_in_its_lineage(family):
    text = family.card("student/1").text
    lineage = text.split("## Lineage", 1)[1].split("\n## ", 1)[0]
    steps = [line.split(":", 1)[0] for line in lineage.splitlines() if line.startswith("- ")]
    assert steps == ["- `gpt2/1`", "- `gpt2/1` → `bard/1`", "- `small/1`",
                     "- `bard/1` (teacher) → `student/1` (this variant)",
                     "- `small/1` (student_init) → `student/1` (this variant)"]


def test_a_deep_family_keeps_its_root_and_newest_steps():
    f = Family()
    f.add("v/1", "create")
    for version in range(2, 102):
        f.add(f"v/{version}", "finetune", [f"v/{version - 1}"], deltas={"perplexity": -0.1})
    text = f.card("v/101").text
    steps = [line for line in text.split("## Lineage", 1)[1].splitlines() if line.startswith("- ")]
    assert steps[0] == "- `v/1`: create" and "60 generations between" in steps[1]
    assert steps[-1].startswith("- `v/100` → `v/101` (this variant)") and len(steps) == 42


def test_markdown_table_cells_stay_one_line():
    f = Family()
    f.add("a/1", "create")
    f.add("b/1", "finetune", ["a/1"], settings={"prompt": "one | two\nthree", "data": ["x" * 500]})
    made = f.card("b/1").text.split("## How it was made", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in made.splitlines() if line.startswith("| prompt") or line.startswith("| data")]
    assert rows[0] == "| prompt | one \\| two three |"
    assert len(rows[1]) < 200 and rows[1].endswith("… |")


def test_datasets_from_lineage_prefer_recorded_descriptions(family):
    graph = family.graph("bard/1")
    assert [(d["name"], d["context"], d["digest"]) for d in datasets_from_lineage(graph, "bard/1")] == [
        ("shakespeare.txt", "training", None), ("held-out.txt", "validation", None)]
    family.edges[0] = LineageEdge(parent="gpt2/1", child="bard/1", operation="finetune",
                                  settings={"data": ["/data/shakespeare.txt"], "datasets": [TRAIN]})
    assert datasets_from_lineage(family.graph("bard/1"), "bard/1") == [TRAIN]


# ---------------------------------------------------------------- through the registry


@pytest.fixture(scope="module")
def stamped(tmp_path_factory):
    """`base/1` and its store-only fine-tune `tuned/1`, both with a perplexity."""
    from registry import Registry

    home = tmp_path_factory.mktemp("cards") / "home"
    store_only_plugin.seed_home(home)
    store_only_plugin.install()
    reg = Registry(home)
    reg.record_metrics("base/1", {"perplexity": 60.0})
    tuned = reg.run("stamp", "base/1", name="tuned", tag="card")
    reg.record_metrics(tuned, {"perplexity": 40.0})
    yield reg
    reg.close()


def test_a_registered_variants_card_from_its_lineage_graph(stamped):
    reg = stamped
    tuned = reg.get("tuned/1")
    card = ModelCard(model_card(tuned, reg.lineage_graph(tuned, descendants=False)))
    assert card.data.base_model == "base/1" and card.data.base_model_relation == "finetune"
    assert card.data.gpt2_registry["content_hash"] == tuned.content_hash
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("perplexity", 40.0)]
    assert "- `base/1` → `tuned/1` (this variant): finetune: perplexity 60 → 40 (−20)" in card.text
    assert f"`{tuned.uri}`" in card.text and "| tag | card |" in card.text


def test_a_capability_reads_its_variants_lineage_through_the_run_context(stamped, tmp_path):
    from registry.capability import RunContext

    context = RunContext(variant=stamped.get("tuned/1"), workdir=tmp_path, variants=stamped, home=stamped.home)
    graph = context.lineage()
    assert set(graph.nodes) == {"base/1", "tuned/1"}
    assert [(e.parent, e.child, e.operation) for e in graph.edges] == [("base/1", "tuned/1", "finetune")]
