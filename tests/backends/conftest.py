"""Fixtures of the backend tests that decode the Hugging Face fixture model."""

import pytest


@pytest.fixture(scope="module")
def lm(fixture_dir):
    from backends import keras_gpt2

    return keras_gpt2.load(fixture_dir)


@pytest.fixture(scope="module")
def cases(reference):
    """The reference cases that carry transformers' 16 greedy tokens."""
    return [case for case in reference["cases"] if "greedy_16" in case]
