"""The `prune` capability: the plugin module gpt2-registry loads (`gpt2reg prune` comes with it).

`gpt2reg prune REF --sparsity 0.5` zeroes the smallest-magnitude weights of
REF's dense kernels and registers the result as a new full variant. The
lineage edge from REF keeps the settings and the change of each figure
measured on both sides in this run: perplexity on the same held-out text, and
the sparsity counted as zeros in the weights that were saved.

The command, its `--help`, `--json`, validation and exit codes come from the
options declared below; the module imports nothing but `registry.plugin_api`
(cheap: it is imported at every start of the CLI) and numpy inside `run`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from registry.plugin_api import (
    Capability,
    CapabilityResult,
    UsageError,
    heldout_documents,
    hookimpl,
    load_model,
    option,
    save_model,
    score,
    weights,
)

SCOPES = ("per-matrix", "global")
# Where the pruning applies: the dense kernels of every transformer layer.
TARGETS = ("query", "key", "value", "attention_output", "feedforward_intermediate_dense", "feedforward_output_dense")


class Prune(Capability):
    """Zero the smallest-magnitude weights of REF's dense kernels; registers the pruned variant."""

    name = "prune"
    operation = "prune"  # the lineage operation of the variants it makes

    @dataclass
    class Options:
        sparsity: float = option(required=True, above=0, below=1,
                                 help="Fraction of the weights to set to zero, between 0 and 1 (0.5: half).")
        scope: str = option("per-matrix", choices=SCOPES, help="per-matrix: each matrix loses that fraction; "
                                                                "global: the smallest weights of all matrices.")
        eval_data: list[str] | None = option(path=True, help="Text for the perplexity before and after "
                                                              "(default: embedded held-out text).")

    def run(self, context, options):
        from gpt2reg_prune import magnitude

        variant = context.variant
        if variant.kind == "adapter":
            raise UsageError(f"{variant.ref} is a LoRA adapter; merge it first (`gpt2reg merge {variant.ref}`) "
                             "and prune the merged variant")
        if variant.kind == "export":
            raise UsageError(f"{variant.ref} is an export; prune its source {variant.parent}")
        if variant.tags.get("quantization"):
            raise UsageError(f"{variant.ref} is quantized ({variant.tags['quantization']}); prune its float parent "
                             f"{variant.parent}, then quantize the pruned variant")
        documents = heldout_documents(options.eval_data)  # before any model loads: bad text fails fast
        if sum(max(len(ids) - 1, 0) for ids in documents) < 1:
            raise UsageError("--eval-data is too short to measure perplexity (under 2 tokens); give more text")

        context.progress(description=f"pruning {variant.ref} to {options.sparsity:.0%} zeros ({options.scope})")
        lm = load_model(context.parent_preset())  # the parent's files, checked against their hash
        kernels = _dense_kernels(lm)
        parent_metrics = _figures(lm, documents)
        pruned = magnitude.prune({path: kernel.numpy() for path, kernel in kernels.items()},
                                 options.sparsity, options.scope)
        for path, values in pruned.items():
            kernels[path].assign(values)
        preset = context.workdir / "preset"
        save_model(lm, preset)
        del lm, kernels, pruned

        context.progress(description="measuring the pruned variant as saved")
        child = load_model(preset)  # the figures of the files that get registered, not of the copy in memory
        metrics = _figures(child, documents)
        matrices = _dense_kernels(child)
        return CapabilityResult(
            preset_dir=preset,
            metrics=metrics,
            parent_metrics=parent_metrics,  # the core stores metrics - parent_metrics on the lineage edge
            settings={
                "sparsity": options.sparsity, "scope": options.scope, "method": "magnitude", "targets": list(TARGETS),
                "matrices": len(matrices), "prunable_weights": sum(math.prod(k.shape) for k in matrices.values()),
                "eval_data": list(options.eval_data or ["embedded held-out text"]),
                "eval_tokens": sum(len(ids) for ids in documents),
            },
            tags={"pruning": f"magnitude {options.scope} {options.sparsity:g}"},
        )

    def report(self, outcome):
        variant, metrics = outcome.variant, outcome.variant.metrics
        return [f"{variant.ref}: {metrics['sparsity']:.1%} of the weights in the dense kernels are zero "
                f"({outcome.options.scope}; {metrics['model_sparsity']:.1%} of all weights); "
                f"perplexity {metrics['perplexity']:,.2f}, parent {variant.parent}"]


def _dense_kernels(lm) -> dict:
    """The dense kernels of the transformer layers, by variable path, as the model's own variables.

    Embeddings, layer norms and biases are not pruned: the token embedding is
    tied to the output layer (a zero there removes a token from both ends),
    and norms and biases are under 1% of the weights.
    """
    kernels = {
        path: variable for path, variable in weights(lm).items()
        if path.startswith("transformer_layer_") and path.endswith("/kernel") and path.split("/")[-2] in TARGETS
    }
    if not kernels:
        raise UsageError("this model has no transformer dense kernels to prune")
    return kernels


def _figures(lm, documents: list[list[int]]) -> dict[str, float]:
    """Perplexity on the evaluation text and the fraction of zeros: in the pruned kernels, and in all weights."""
    from gpt2reg_prune import magnitude

    kernels = [kernel.numpy() for kernel in _dense_kernels(lm).values()]
    every_weight = [variable.numpy() for variable in weights(lm).values()]
    return {
        "perplexity": score(lm, documents).perplexity,
        "sparsity": magnitude.zero_fraction(kernels),
        "zero_weights": float(magnitude.zero_count(kernels)),
        "model_sparsity": magnitude.zero_fraction(every_weight),
    }


@hookimpl
def register_capabilities(register):
    register(Prune)
