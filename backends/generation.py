"""Text generation over a KerasHub `GPT2CausalLM`, with KerasHub's samplers.

Unlike `GPT2CausalLM.generate()`, prompts are token ids with no start token
prepended (the same convention as Hugging Face, so greedy output matches
`transformers` token for token), and a batch is padded only to its longest
prompt plus the new tokens, not to the preprocessor's full sequence length.

Example:
    >>> from backends import generation, keras_gpt2
    >>> lm = keras_gpt2.load("preset-folder")
    >>> generation.generate(lm, [[464, 2068]], max_new_tokens=4)[0].token_ids
    [...]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backends.configs import END_OF_TEXT_ID

import keras_hub  # noqa: E402
from keras import ops  # noqa: E402

SAMPLERS = ("greedy", "top_k", "top_p", "random")


@dataclass(frozen=True)
class Generation:
    token_ids: list[int]  # the continuation only
    finish_reason: str  # "length" or "end_of_text"


def make_sampler(name: str, *, temperature: float = 1.0, top_k: int = 50, top_p: float = 0.9, seed: int | None = None):
    samplers = keras_hub.samplers
    if name == "greedy":
        return samplers.GreedySampler(temperature=temperature)
    if name == "top_k":
        return samplers.TopKSampler(k=top_k, seed=seed, temperature=temperature)
    if name == "top_p":
        return samplers.TopPSampler(p=top_p, seed=seed, temperature=temperature)
    if name == "random":
        return samplers.RandomSampler(seed=seed, temperature=temperature)
    raise ValueError(f"unknown sampler {name!r}")


def generate(
    lm,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    sampler: str = "greedy",
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 0.9,
    seed: int | None = None,
    stop_at_end_of_text: bool = True,
) -> list[Generation]:
    """Continue each prompt by up to `max_new_tokens` tokens, all prompts in one batch."""
    # An empty prompt means "unconditional": start from the end-of-text token, as GPT-2 was trained.
    prompts = [list(p) if p else [END_OF_TEXT_ID] for p in prompts]
    lengths = np.array([len(p) for p in prompts])
    total_length = int(lengths.max()) + max_new_tokens
    token_ids = np.zeros((len(prompts), total_length), dtype="int32")
    padding_mask = np.zeros((len(prompts), total_length), dtype="bool")
    for row, prompt in enumerate(prompts):
        token_ids[row, : len(prompt)] = prompt
        padding_mask[row, : len(prompt)] = True

    hidden_states, cache = lm._build_cache(ops.convert_to_tensor(token_ids))

    def next_logits(prompt, cache, index):
        cache_update_index = index - 1
        batch_size = ops.shape(prompt)[0]
        step_ids = ops.slice(prompt, [0, cache_update_index], [batch_size, 1])
        logits, step_hidden, cache = lm.call_with_cache(step_ids, cache, cache_update_index)
        return ops.squeeze(logits, axis=1), ops.squeeze(step_hidden, axis=1), cache

    keras_sampler = make_sampler(sampler, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    output = keras_sampler(
        next=next_logits,
        prompt=ops.convert_to_tensor(token_ids),
        cache=cache,
        index=int(lengths.min()),
        mask=ops.convert_to_tensor(padding_mask),
        stop_token_ids=(END_OF_TEXT_ID,) if stop_at_end_of_text else None,
        hidden_states=hidden_states,
        model=lm,
    )
    output = np.asarray(ops.convert_to_numpy(output))

    results = []
    for row, length in enumerate(lengths):
        continuation = output[row, length : length + max_new_tokens].tolist()
        if stop_at_end_of_text and END_OF_TEXT_ID in continuation:
            results.append(Generation(continuation[: continuation.index(END_OF_TEXT_ID)], "end_of_text"))
        else:
            results.append(Generation(continuation, "length"))
    return results
