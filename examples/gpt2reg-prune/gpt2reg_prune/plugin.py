"""The `prune` capability and the `gpt2reg prune` command: the plugin module gpt2-registry loads.

`gpt2reg prune REF --sparsity 0.5` zeroes the smallest-magnitude weights of
REF's dense kernels and registers the result as a new full variant. The
lineage edge from REF keeps the settings and the change of each figure
measured on both sides in this run: perplexity on the same held-out text, and
the sparsity counted as zeros in the weights that were saved.

This module is imported at every start of the CLI, so it stays cheap: numpy,
TensorFlow and the backend are imported inside `run`. It never imports
TensorFlow or KerasHub itself; the backend (`backends.keras_gpt2`,
`backends.scoring`) loads, saves and scores the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import click

from registry import Capability, CapabilityResult, hookimpl
from registry.errors import UsageError

SCOPES = ("per-matrix", "global")
EVALUATION_TOKENS = 2048  # of the default held-out text, as `quantize` measures it
# Where the pruning applies: the dense kernels of every transformer layer.
TARGETS = ("query", "key", "value", "attention_output", "feedforward_intermediate_dense", "feedforward_output_dense")


class Prune(Capability):
    """Zero the smallest-magnitude weights of the transformer layers' dense kernels."""

    name = "prune"
    operation = "prune"  # the lineage operation of the variants it makes

    @dataclass
    class Options:
        sparsity: float | None = None  # the fraction of the weights in scope to set to zero
        scope: str = "per-matrix"  # per-matrix: each matrix loses that fraction; global: the smallest overall
        eval_data: list[str] | None = None  # default: held-out text of the embedded corpus

        def __post_init__(self):
            if self.sparsity is None:
                raise UsageError("prune needs --sparsity S, the fraction of the weights to zero (0 < S < 1)")
            if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
                raise UsageError(f"--sparsity must be a number between 0 and 1, not {self.sparsity!r}")
            if not 0 < self.sparsity < 1:  # also refuses nan
                raise UsageError(f"--sparsity must be between 0 and 1 (the fraction of the weights to zero), "
                                 f"not {self.sparsity}; for example --sparsity 0.5")
            if self.scope not in SCOPES:
                raise UsageError(f"unknown --scope {self.scope!r}; choose one of: {', '.join(SCOPES)}")
            if isinstance(self.eval_data, (str, Path)):
                self.eval_data = [str(self.eval_data)]
            for path in self.eval_data or []:
                if not Path(path).exists():
                    raise UsageError(f"--eval-data {path} does not exist; give a text file, a folder of them or JSONL")

    def run(self, context, *, sparsity, scope, eval_data):
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
        documents = _evaluation_documents(eval_data)  # before any model loads: bad text fails fast

        from backends import keras_gpt2

        context.progress(description=f"pruning {variant.ref} to {sparsity:.0%} zeros ({scope})")
        lm = keras_gpt2.load(context.parent_preset())  # the parent's files, checked against their hash
        kernels = _dense_kernels(lm)
        parent_metrics = _figures(lm, documents)
        pruned = magnitude.prune({path: kernel.numpy() for path, kernel in kernels.items()}, sparsity, scope)
        for path, weights in pruned.items():
            kernels[path].assign(weights)
        preset = context.workdir / "preset"
        keras_gpt2.save(lm, preset)
        del lm, kernels, pruned

        context.progress(description="measuring the pruned variant as saved")
        child = keras_gpt2.load(preset)  # the figures of the files that get registered, not of the copy in memory
        metrics = _figures(child, documents)
        matrices = _dense_kernels(child)
        return CapabilityResult(
            preset_dir=preset,
            metrics=metrics,
            parent_metrics=parent_metrics,  # the core stores metrics - parent_metrics on the lineage edge
            settings={
                "sparsity": sparsity, "scope": scope, "method": "magnitude", "targets": list(TARGETS),
                "matrices": len(matrices), "prunable_weights": sum(math.prod(k.shape) for k in matrices.values()),
                "eval_data": list(eval_data or ["embedded held-out text"]),
                "eval_tokens": sum(len(ids) for ids in documents),
            },
            tags={"pruning": f"magnitude {scope} {sparsity:g}"},
        )


def _dense_kernels(lm) -> dict:
    """The dense kernels of the transformer layers, by variable path, as the model's own variables.

    Embeddings, layer norms and biases are not pruned: the token embedding is
    tied to the output layer (a zero there removes a token from both ends),
    and norms and biases are under 1% of the weights.
    """
    kernels = {
        variable.path: variable for variable in lm.backbone.weights
        if variable.path.startswith("transformer_layer_") and variable.path.endswith("/kernel")
        and variable.path.split("/")[-2] in TARGETS
    }
    if not kernels:
        raise UsageError("this model has no transformer dense kernels to prune")
    return kernels


def _figures(lm, documents: list[list[int]]) -> dict[str, float]:
    """Perplexity on the evaluation text and the fraction of zeros: in the pruned kernels, and in all weights."""
    from backends import scoring
    from gpt2reg_prune import magnitude

    kernels = [kernel.numpy() for kernel in _dense_kernels(lm).values()]
    every_weight = [weights.numpy() for weights in lm.backbone.weights]
    return {
        "perplexity": scoring.score(lm, documents).perplexity,
        "sparsity": magnitude.zero_fraction(kernels),
        "zero_weights": float(magnitude.zero_count(kernels)),
        "model_sparsity": magnitude.zero_fraction(every_weight),
    }


def _evaluation_documents(eval_data) -> list[list[int]]:
    """Token ids of the `--eval-data` files, or of the embedded held-out text (every tenth document)."""
    from registry.data import read_texts, tokenize_documents

    if eval_data:
        documents = tokenize_documents(read_texts(eval_data))
    else:
        from backends.tokenizer import encode
        from registry.corpus import documents as corpus

        texts, _ = corpus()
        documents = [encode("\n\n".join(texts[::10]))[:EVALUATION_TOKENS]]
    if sum(max(len(ids) - 1, 0) for ids in documents) < 1:
        raise UsageError("--eval-data is too short to measure perplexity (under 2 tokens); give more text")
    return documents


@hookimpl
def register_capabilities(register):
    register(Prune)


@hookimpl
def register_commands(cli):
    from registry.cli import common, emit, open_registry

    @cli.command("prune")
    @click.argument("ref")
    @click.option("--sparsity", type=float, required=True,
                  help="Fraction of the weights to set to zero, between 0 and 1 (0.5: half).")
    @click.option("--scope", default="per-matrix", show_default=True,
                  help="per-matrix: each matrix loses that fraction | global: the smallest weights of all matrices.")
    @click.option("--eval-data", multiple=True,
                  help="Text for the perplexity before and after (default: embedded held-out text).")
    @click.option("--name", default=None, help="Registered model for the result (default: PARENT-prune).")
    @common
    def prune(ref, sparsity, scope, eval_data, name):
        """Zero the smallest-magnitude weights of REF's dense kernels; registers the pruned variant."""
        reg = open_registry(progress=True)
        variant = reg.run("prune", ref, name=name, sparsity=sparsity, scope=scope, eval_data=list(eval_data) or None)

        def human():
            [edge] = [e for e in reg.lineage(variant, descendants=False)["edges"] if e["child"] == variant.ref]
            metrics, settings, change = variant.metrics, edge["settings"], edge["metric_deltas"]["perplexity"]
            click.echo(
                f"{variant.ref}: {metrics['sparsity']:.1%} of the {settings['prunable_weights']:,} weights in "
                f"{settings['matrices']} dense kernels are zero ({scope}; {metrics['model_sparsity']:.1%} of all "
                f"weights); perplexity {metrics['perplexity'] - change:,.2f} -> {metrics['perplexity']:,.2f} "
                f"({change:+,.2f}), parent {edge['parent']}"
            )

        emit(variant.to_dict(), human)
