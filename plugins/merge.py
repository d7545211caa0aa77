"""`merge`: fold a LoRA adapter into its base, making a full variant.

The merged weights are base + (alpha / rank) · A·B for every adapted layer, so
the merged model's logits equal base + adapter's; the largest difference on a
probe batch is measured and recorded.
"""

from __future__ import annotations

from registry import Capability, CapabilityResult, hookimpl
from registry.capability import sample_generations
from registry.errors import UsageError

PROBE_TOKENS = [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]  # "The quick brown fox jumps over the lazy dog."


class Merge(Capability):
    """Fold the LoRA adapter ADAPTER_REF into its base: a full variant with the same outputs."""

    name = "merge"
    operation = "merge"
    reference = "adapter_ref"

    def run(self, context, options):
        if context.variant.kind != "adapter":
            raise UsageError(f"{context.variant.ref} is not an adapter; merge takes a variant made by `gpt2reg lora`")
        import numpy as np  # here, not at the top: every `gpt2reg` command imports this module

        from backends import keras_gpt2, lora

        adapted = context.load_model()
        merged = context.load_parent_model()
        lora.merge_into(adapted, merged)
        ids = np.array([PROBE_TOKENS])
        inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
        difference = float(np.max(np.abs(np.asarray(adapted(inputs)) - np.asarray(merged(inputs)))))
        preset = context.workdir / "preset"
        keras_gpt2.save(merged, preset)
        return CapabilityResult(
            preset_dir=preset,
            metrics={"merge_max_abs_logit_diff": difference, "parameters": keras_gpt2.parameter_count(merged)},
            settings={"adapter": context.variant.ref, "base": context.variant.parent, **lora.settings(adapted)},
            tables=sample_generations(merged),
        )


@hookimpl
def register_capabilities(register):
    register(Merge)
