"""The hook specifications of gpt2-registry: the whole plugin contract.

Hooks are called with keyword arguments only, and an implementation may take
any subset of them, so adding an argument later breaks no plugin.

Example plugin module:

    from registry import hookimpl, Capability

    class Shout(Capability):
        name = "shout"
        def run(self, context, **options):
            ...

    @hookimpl
    def register_capabilities(register):
        register(Shout)
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("gpt2reg")
hookimpl = pluggy.HookimplMarker("gpt2reg")


# ---------------------------------------------------------------- registration


@hookspec
def register_capabilities(register):
    """Register capability classes: call ``register(CapabilityClass)`` for each."""


@hookspec
def register_commands(cli):
    """Add commands to the ``gpt2reg`` click group ``cli``."""


# ---------------------------------------------------------------- devices


@hookspec(firstresult=True)
def select_strategy(device):
    """Return a ``tf.distribute.Strategy`` for the device name, or None to pass.

    ``device`` is one of ``auto``, ``cpu``, ``gpu``, ``multi-gpu``,
    ``multiworker``, ``tpu`` (plugins may accept more). The first non-None
    result wins; the built-in ``devices`` plugin answers every built-in name.
    """


# ---------------------------------------------------------------- run lifecycle


@hookspec
def before_run(capability, variant, options):
    """Called before a capability runs on ``variant`` (None for none) with validated ``options``."""


@hookspec
def after_run(capability, variant, result, new_variant):
    """Called after a capability succeeded; ``new_variant`` is None unless one was registered."""


@hookspec
def on_run_error(capability, variant, error):
    """Called when a capability or its recording failed; the store is already rolled back."""
