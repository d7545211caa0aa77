"""`export`: a variant in the file format a deployment needs, checked against its source.

Each export is registered as a variant of its own (kind ``export``, tag
``format``) and its files are logged to MLflow; the core copies them to
``--out`` once they are recorded. Before it is recorded every export is run
back in its own runtime (Keras, TensorFlow, LiteRT, onnxruntime) and compared
with the source model in Keras: the largest logit difference and the share of
positions whose top token agrees, the perplexity on the same evaluation text,
and batch-1 greedy tokens/s, all measured in this run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from backends.configs import EXPORT_FORMATS, QUANTIZATION_DTYPES, export_options_problem
from registry import Capability, CapabilityResult, hookimpl, option
from registry.errors import UsageError

PROBE_TOKENS = 64  # positions compared logit by logit with the source
MODEL_CARD = "README.md"  # where the Hugging Face Hub reads a repository's model card
EMBEDDED_EVALUATION_TEXT = "embedded held-out text"


class Export(Capability):
    """Write REF as FORMAT into OUT, checked in its own runtime against REF; registered as a variant."""

    name = "export"
    operation = "export"
    variant_kind = "export"

    @dataclass
    class Options:
        format: str = option(choices=EXPORT_FORMATS, required=True, help="The file format.")
        out: str = option(required=True, help="New (or empty) folder for the exported files.")
        quantize: str | None = option(help="tflite: float16 | int8; onnx: int8 (weights only, dynamic range).")
        eval_data: list[str] | None = option(path=True, help="Text for the perplexity check "
                                                              "(default: embedded held-out text).")
        new_tokens: int = option(32, at_least=1, help="Tokens per greedy speed measurement.")
        text_field: str = option("text", help="JSONL field holding the text.")

        def __post_init__(self):
            problem = export_options_problem(self.format, self.quantize)
            if problem:
                raise UsageError(problem)
            self.out = str(checked_destination(self.out))

    def run(self, context, options):
        format, out, quantize, eval_data = options.format, options.out, options.quantize, options.eval_data
        new_tokens, text_field = options.new_tokens, options.text_field
        variant = context.variant
        if variant.kind == "adapter":
            raise UsageError(f"{variant.ref} is a LoRA adapter; merge it first (`gpt2reg merge {variant.ref}`)")
        if variant.kind == "export":
            raise UsageError(f"{variant.ref} is already an export; export its source {variant.parent} instead")
        quantized = variant.tags.get("quantization")
        if quantized and quantized not in QUANTIZATION_DTYPES and format != "keras":
            raise UsageError(
                f"{variant.ref} holds Keras {quantized} weights, which only the keras format keeps; "
                f"export its float parent {variant.parent} with --quantize instead"
            )
        refuse_store_paths(Path(out), context.home)

        from backends import export, keras_gpt2
        from backends.tokenizer import special_tokens_rule
        from plugins.measurements import SPEED_PROMPT, keras_figures, speed_prompt
        from registry.plugin_api import heldout_documents

        context_length = variant.config.get("max_sequence_length", 1024)
        documents = heldout_documents(eval_data, text_field)
        prompt, new_tokens = speed_prompt(context_length, new_tokens)
        parent_preset = context.parent_preset()

        context.progress(description=f"exporting {variant.ref} as {format}")
        folder = export.export(parent_preset, format, context.workdir / "export", quantize=quantize)

        source = keras_gpt2.load(parent_preset)
        probe = documents[0][:min(PROBE_TOKENS, context_length)]
        source_logits = export.keras_logits(source, [probe])
        parent_metrics = keras_figures(source, documents, prompt, new_tokens)
        del source

        context.progress(description=f"checking the {format} export in its own runtime")
        runtime = export.open_runtime(folder, format)
        logits = runtime.logits([probe])
        metrics = {
            "max_abs_logit_diff": float(abs(logits - source_logits).max()),
            "top1_agreement": float((logits.argmax(-1) == source_logits.argmax(-1)).mean()),
            "perplexity": export.runtime_perplexity(runtime, documents, context_length),
            "greedy_tokens_per_second": export.greedy_tokens_per_second(runtime, prompt, new_tokens),
        }
        metrics["speedup"] = metrics["greedy_tokens_per_second"] / parent_metrics["greedy_tokens_per_second"]
        del runtime
        weights = quantize or variant.tags.get("quantization") or "float32"
        if format == "hf":
            # A Hugging Face folder is uploaded as a Hub repository, whose page is its README.md.
            card = hf_model_card(variant, context.lineage(), evaluation_data(eval_data), parent_metrics["perplexity"],
                                 metrics, weights=weights, probe_tokens=len(probe))
            (folder / MODEL_CARD).write_text(card, encoding="utf-8")
        return CapabilityResult(
            preset_dir=folder, metrics=metrics, parent_metrics=parent_metrics,
            settings={"format": format, "quantize": quantize, "weights": weights, "out": out,
                      "eval_data": list(eval_data or [EMBEDDED_EVALUATION_TEXT]), "probe_tokens": len(probe),
                      "speed_prompt": SPEED_PROMPT, "new_tokens": new_tokens, "special_tokens": special_tokens_rule(),
                      "greedy_decoding": "key/value cache" if format in ("keras", "hf", "savedmodel") else "full recompute per token"},
            tags={"format": format, "weights": weights},
            deliver_to=Path(out),
        )


    def document(self, outcome):
        return {**super().document(outcome), "out": outcome.options.out}

    def report(self, outcome):
        variant, metrics, out = outcome.variant, outcome.variant.metrics, outcome.options.out
        return [f"{outcome.options.format} ({variant.tags.get('weights')}) in {out}: {variant.size_bytes:,} bytes; "
                f"largest logit difference {metrics['max_abs_logit_diff']:.2e}, top-1 agreement "
                f"{metrics['top1_agreement']:.1%}; perplexity {metrics['perplexity']:,.2f}; "
                f"greedy {metrics['greedy_tokens_per_second']:.1f} tokens/s ({metrics['speedup']:.2f}x the source in Keras)"]


def hf_model_card(variant, graph, evaluated_on: dict, source_perplexity: float, checks: dict[str, float], *,
                  weights: str, probe_tokens: int) -> str:
    """The README.md of an hf export: the model card of the variant whose weights it holds
    (`registry.model_card`), named as a transformers checkpoint, with what this export measured."""
    from huggingface_hub import ModelCard

    from registry.model_card import datasets_from_lineage, model_card, recorded_evaluations

    evaluations = [{"metric": "perplexity", "value": source_perplexity, "dataset": evaluated_on},
                   *recorded_evaluations(variant)]
    card = ModelCard(model_card(variant, graph, datasets=[*datasets_from_lineage(graph, variant.ref), evaluated_on],
                                evaluations=evaluations))
    # The folder is a transformers checkpoint (GPT2LMHeadModel); the Hub picks its loading code by this field.
    card.data.library_name = "transformers"
    card.text = card.text.rstrip("\n") + "\n\n" + "\n".join([
        "## These files",
        "",
        f"A Hugging Face transformers checkpoint of `{variant.ref}` ({weights} weights), written by "
        f"`gpt2reg export {variant.ref} --format hf`:",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        "```",
        "",
        f"Checked before it was registered, by loading these files back with KerasHub and comparing them with "
        f"`{variant.ref}` in Keras on {evaluated_on['name']}: largest logit difference "
        f"{checks['max_abs_logit_diff']:.2e} over {probe_tokens} positions, top-1 agreement "
        f"{checks['top1_agreement']:.1%}, perplexity {checks['perplexity']:,.2f} (the source: {source_perplexity:,.2f}).",
        "",
    ])
    return str(card)


def evaluation_data(eval_data: list[str] | None) -> dict:
    """The text the export measures perplexity on, as the model card names a data set."""
    if not eval_data:
        return {"name": EMBEDDED_EVALUATION_TEXT, "digest": None, "source": "registry.corpus",
                "context": "evaluation", "rows": None, "bytes": None}
    from registry.datasets import describe

    uses = [describe(path, "evaluation") for path in eval_data]
    if len(uses) == 1:
        return uses[0].to_dict()
    return {"name": ", ".join(use.name for use in uses), "digest": ",".join(use.digest for use in uses),
            "source": ", ".join(use.source for use in uses), "context": "evaluation",
            "rows": sum(use.rows or 0 for use in uses), "bytes": sum(use.bytes for use in uses)}


def checked_destination(raw) -> Path:
    """`--out` as an absolute path, refused (one line) where the files could not land exactly there.

    The export takes minutes; everything that would make the final copy fail or land elsewhere is
    checked first: text no file system takes, a symbolic link (the files would land where it points),
    a file or a folder with files in it, and a missing parent that cannot be made.
    """
    from registry.artifacts import delivery_problem
    from registry.data import check_path, path_kind

    if not raw:
        raise UsageError("export needs --out DIR (a new or empty folder for the files)")
    out = Path(os.path.abspath(check_path(raw, "--out")))
    kind = path_kind(out, "--out")  # refuses what cannot be reached (a loop of symbolic links)
    # The same check the delivery repeats before the copy: absent, or an empty real folder.
    problem = delivery_problem(out)
    if problem:
        raise UsageError(f"--out {problem}")
    if kind == "missing":
        for above in out.parents:
            above_kind = path_kind(above, "--out")
            if above_kind == "missing":
                continue
            if above_kind != "folder":
                raise UsageError(f"--out {out} lies under {above}, which is a file, not a folder; choose a path under a folder")
            if not os.access(above, os.W_OK | os.X_OK):
                raise UsageError(f"--out {out} cannot be made: {above} is not writable; choose a folder you can write to")
            break
    return out


def refuse_store_paths(out: Path, home) -> None:
    """Refuse an --out that would write into the registry's own files: its home (artifact store,
    staging, caches) or a SQLite database of either store, wherever the URLs put them."""
    try:
        target = out.resolve()
        protected = [home.path.resolve()]
        protected += [Path(url.split(":///", 1)[1]).resolve() for url in (home.tracking_uri, home.lineage_url)
                      if url.startswith("sqlite:///")]
    except (OSError, RuntimeError) as error:  # RuntimeError: a loop of symbolic links
        raise UsageError(f"cannot follow --out {out}: {error}; check the path") from None
    for place in protected:
        if target == place or target.is_relative_to(place) or place.is_relative_to(target):
            raise UsageError(f"--out {out} is inside the registry home or its databases ({place}); "
                             "choose a folder outside it")


@hookimpl
def register_capabilities(register):
    register(Export)
