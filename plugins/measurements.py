"""The figures `quantize` and `export` record for a variant and its parent, measured the same way.

Perplexity on the same evaluation text (by default the embedded held-out text,
first 2,048 tokens: `registry.plugin_api.heldout_documents`) and batch-1 greedy tokens/s from the same prompt.
"""

from __future__ import annotations

SPEED_PROMPT = "The meaning of life is"


def speed_prompt(context_length: int, new_tokens: int) -> tuple[list[int], int]:
    """The speed prompt's ids, and `new_tokens` cut to what the context leaves after it."""
    from backends.tokenizer import encode

    prompt = encode(SPEED_PROMPT)
    return prompt, min(new_tokens, context_length - len(prompt))


def keras_figures(lm, documents: list[list[int]], prompt: list[int], new_tokens: int) -> dict[str, float]:
    """Perplexity (Keras's arithmetic) and greedy tokens/s (as `generate` decodes it: through
    onnxruntime for float32 and int8 variants) of a `GPT2CausalLM`."""
    from backends import generation, scoring

    return {
        "perplexity": scoring.score(lm, documents).perplexity,
        "greedy_tokens_per_second": generation.greedy_tokens_per_second(lm, prompt, new_tokens),
    }
