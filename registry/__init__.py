"""gpt2-registry: a plugin-based MLOps registry for GPT-2 on Keras 3.

>>> from registry import Registry
>>> reg = Registry()                       # the home: --home, $GPT2REG_HOME or ./mlruns
>>> v = reg.get("quickstart")              # latest version
>>> lm = v.load()                          # a keras_hub GPT2CausalLM

Importing this package is cheap: MLflow, SQLAlchemy and TensorFlow load on first use.
"""

from registry.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["Registry", "Variant", "Capability", "CapabilityResult", "RunContext", "hookimpl", "option", "__version__"]


def __getattr__(name):
    # Lazy attributes keep `import registry` (and `gpt2reg --help`) fast.
    if name in ("Registry", "Variant"):
        from registry import sdk

        return getattr(sdk, name)
    if name in ("Capability", "CapabilityResult", "RunContext"):
        from registry import capability

        return getattr(capability, name)
    if name == "option":
        from registry.options import option

        return option
    raise AttributeError(f"module 'registry' has no attribute {name!r}")
