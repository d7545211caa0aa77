"""gpt2reg-prune: magnitude pruning of GPT-2 variants, as a gpt2-registry plugin.

The plugin module (the entry point) is `gpt2reg_prune.plugin`; the pruning
arithmetic, plain numpy, is `gpt2reg_prune.magnitude`.
"""

__version__ = "0.1.0"
