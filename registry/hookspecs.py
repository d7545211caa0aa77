"""The hook specifications of gpt2-registry: the whole plugin contract.

Hooks are called with keyword arguments only, and an implementation may take
any subset of them, so adding an argument later breaks no plugin.

A plugin that implements a hook not listed here (a misspelt name), declares an
argument a hook does not have, or raises inside a registration or lifecycle
hook is disabled and reported by `gpt2reg plugins`; the other plugins and
commands go on without it. Registration and lifecycle hooks cannot be
wrappers: they are called one plugin at a time so that a failure is blamed on
the plugin that raised.

Example plugin module:

    from dataclasses import dataclass
    from registry.plugin_api import Capability, CapabilityResult, hookimpl, option

    class Shout(Capability):
        # Its docstring is the command's help: `gpt2reg shout TEXT`.
        name = "shout"
        needs_model = False

        @dataclass
        class Options:
            text: str = option(help="What to shout.", argument=True, required=True)

        def run(self, context, options):
            return CapabilityResult(output={"text": options.text.upper()})

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
    """Register capability classes: call ``register(CapabilityClass)`` for each.

    If the hook raises, none of the plugin's capabilities are registered.
    """


@hookspec
def register_commands(cli):
    """Add commands to the ``gpt2reg`` click group ``cli``.

    Called at every start of the CLI, so it must be cheap: import heavy libraries
    inside the commands. If the hook raises, the commands it added are removed.
    """


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
    """Called before a capability runs on ``variant`` (None for none) with its checked ``options``
    (the capability's ``Options`` instance; `registry.options.as_dict` gives a dict).

    It cannot stop the run: a plugin whose hook raises is disabled and the run goes on.
    """


@hookspec
def after_run(capability, variant, result, new_variant):
    """Called after a capability succeeded; ``new_variant`` is None unless one was registered.

    A plugin whose hook raises is disabled; what the run made stays registered.
    """


@hookspec
def on_run_error(capability, variant, error):
    """Called when a capability or its recording failed; the store is already rolled back.

    ``error`` is the exception the caller gets: a `CapabilityFailed` (naming the
    plugin, the original as ``__cause__``) when the capability's own code raised.
    A failed run of a capability that makes a variant is already recorded as a
    FAILED MLflow run.
    """
