"""The plugin manager: built-ins and third-party plugins load the same way.

Built-in plugins are the modules in `DEFAULT_PLUGINS`; third-party plugins
come from the `gpt2reg` entry-point group. `GPT2REG_LOAD_PLUGINS` (a comma
list of module names or entry-point names; empty for none) limits what loads.

A broken plugin never breaks the other commands. One that fails to import,
implements a hook that does not exist (a misspelt name), declares arguments a
hook does not have, or raises inside a registration or lifecycle hook is
unregistered and recorded in `failed_plugins()`: `gpt2reg plugins` lists it
with the reason, and the CLI prints a warning naming it. Registration and
lifecycle hooks are therefore called one plugin at a time (`call_each`).

Example:
    >>> from registry import plugins
    >>> sorted(plugins.capabilities())[:3]
    ['distill', 'evaluate', 'export']
    >>> plugins.provider_of("finetune")
    'plugins.finetune'
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import traceback
from dataclasses import dataclass
from typing import Any

import pluggy

from registry import hookspecs
from registry.errors import one_line

DEFAULT_PLUGINS = (
    "plugins.tokenize",
    "plugins.generate",
    "plugins.finetune",
    "plugins.quantize",
    "plugins.export",
    "plugins.lora",
    "plugins.merge",
    "plugins.distill",
    "plugins.evaluate",
    "plugins.devices",
)
ENTRY_POINT_GROUP = "gpt2reg"
# Hooks whose implementations are called one at a time, so one that raises is blamed on its plugin.
CALLED_ONE_BY_ONE = ("register_capabilities", "register_commands", "before_run", "after_run", "on_run_error")

pm = pluggy.PluginManager("gpt2reg")
pm.add_hookspecs(hookspecs)


@dataclass(frozen=True)
class PluginFailure:
    """Why a plugin was disabled: where it failed (``import``, ``registration`` or a hook's name) and the error."""

    plugin: str
    stage: str
    error: str  # one line: "ValueError: the message"
    detail: str = ""  # the traceback, when there is one
    source: str = ""  # the distribution of an entry-point plugin

    @property
    def reason(self) -> str:
        if self.stage == "import":
            return f"failed to import: {self.error}"
        if self.stage == "registration":
            return f"was refused at registration: {self.error}"
        return f"failed in {self.stage}: {self.error}"

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} {self.reason}"


_loaded = False
_failures: dict[str, PluginFailure] = {}
_unreported: list[PluginFailure] = []
_sources: dict[str, str] = {}
_providers: dict[str, str] = {}  # capability name -> the plugin that registered it


def _wanted() -> set[str] | None:
    value = os.environ.get("GPT2REG_LOAD_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def load_plugins() -> pluggy.PluginManager:
    """Load built-in and entry-point plugins once; later calls return the same manager."""
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    wanted = _wanted()
    for module_name in DEFAULT_PLUGINS:
        if wanted is not None and module_name not in wanted:
            continue
        try:
            module = importlib.import_module(module_name)
        except (Exception, SystemExit) as error:
            _record(module_name, "import", error)
            continue
        if not pm.is_registered(module):
            _register(module, module_name)
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if wanted is not None and entry_point.name not in wanted and entry_point.value not in wanted:
            continue
        if pm.get_plugin(entry_point.name) is not None:
            continue
        if entry_point.dist is not None:
            _sources[entry_point.name] = f"{entry_point.dist.name} {entry_point.dist.version}"
        try:
            plugin = entry_point.load()
        except (Exception, SystemExit) as error:  # a module that calls sys.exit() must not end every command
            _record(entry_point.name, "import", error)
            continue
        _register(plugin, entry_point.name)
    _disable_plugins_with_unknown_hooks()
    return pm


def _register(plugin, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except Exception as error:  # pluggy.PluginValidationError: a hook with arguments its spec lacks
        _record(name, "registration", error)


def _disable_plugins_with_unknown_hooks() -> None:
    # pluggy accepts an implementation of a hook it does not know (it could be a spec
    # added later), so a misspelt hook would silently never be called.
    known = [name for name, caller in vars(pm.hook).items() if caller.has_spec()]
    for hook_name, caller in list(vars(pm.hook).items()):
        if caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if impl.optionalhook or not pm.is_registered(impl.plugin):
                continue
            close = difflib.get_close_matches(hook_name, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "the hooks are listed in registry.hookspecs"
            disable(impl.plugin_name, "registration", f"unknown hook {hook_name!r} ({hint})")
    for hook_name in CALLED_ONE_BY_ONE:
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if (impl.wrapper or impl.hookwrapper) and pm.is_registered(impl.plugin):
                disable(impl.plugin_name, "registration", f"hook {hook_name!r} cannot be a wrapper")


def _record(name: str, stage: str, error: BaseException | str) -> PluginFailure:
    if isinstance(error, BaseException):
        detail = "".join(traceback.format_exception(error, limit=-5))
        error = one_line(error)
    else:
        detail = ""
    failure = PluginFailure(plugin=name, stage=stage, error=error, detail=detail, source=_sources.get(name, ""))
    if name not in _failures:  # the first failure is the cause; later ones follow from it
        _failures[name] = failure
        _unreported.append(failure)
    return _failures[name]


def disable(plugin_name: str, stage: str, error: BaseException | str) -> PluginFailure:
    """Unregister a broken plugin and record why; the other plugins and commands go on."""
    if pm.get_plugin(plugin_name) is not None:
        pm.unregister(name=plugin_name)
    for capability, provider in list(_providers.items()):
        if provider == plugin_name:
            del _providers[capability]
    return _record(plugin_name, stage, error)


def implementations(hook_name: str) -> list:
    """The hook's implementations in pluggy's call order (last registered first)."""
    return list(reversed(getattr(load_plugins().hook, hook_name).get_hookimpls()))


def call_guarded(impl, hook_name: str, **kwargs) -> tuple[bool, Any]:
    """Call one implementation as pluggy would; if it raises, disable its plugin and return (False, None)."""
    if not pm.is_registered(impl.plugin):  # disabled by an earlier hook of the same call
        return False, None
    args = [kwargs[name] for name in impl.argnames]
    keywords = {name: kwargs[name] for name in impl.kwargnames if name in kwargs}
    try:
        return True, impl.function(*args, **keywords)
    except Exception as error:
        disable(impl.plugin_name, hook_name, error)
        return False, None


def call_each(hook_name: str, **kwargs) -> list[tuple[str, Any]]:
    """Call every implementation of a hook, isolated: ``[(plugin name, result)]`` of those that worked."""
    results = []
    for impl in implementations(hook_name):
        worked, result = call_guarded(impl, hook_name, **kwargs)
        if worked:
            results.append((impl.plugin_name, result))
    return results


def failed_plugins() -> dict[str, PluginFailure]:
    """Plugin name -> why it was disabled (import, registration or a hook that raised)."""
    load_plugins()
    return dict(_failures)


def new_failures() -> list[PluginFailure]:
    """Failures recorded since the last call, so each is reported once."""
    load_plugins()
    reported = list(_unreported)
    _unreported.clear()
    return reported


def capabilities() -> dict:
    """Capability name -> class, from every plugin's `register_capabilities`.

    A plugin whose hook raises (or registers something that is not a
    `Capability`) is disabled and contributes nothing.
    """
    from registry.capability import Capability

    load_plugins()
    _disable_plugins_with_unknown_hooks()
    found: dict[str, type[Capability]] = {}
    _providers.clear()
    for impl in implementations("register_capabilities"):
        offered: dict[str, type[Capability]] = {}

        def register(capability_class, offered=offered):
            if not (isinstance(capability_class, type) and issubclass(capability_class, Capability)):
                raise TypeError(f"{capability_class!r} is not a Capability subclass")
            if not isinstance(getattr(capability_class, "name", None), str):
                raise TypeError(f"{capability_class.__name__} has no name")
            offered[capability_class.name] = capability_class

        worked, _ = call_guarded(impl, "register_capabilities", register=register)
        if worked:
            found.update(offered)
            _providers.update(dict.fromkeys(offered, impl.plugin_name))
    return found


def provider_of(capability: str) -> str | None:
    """The plugin that registered a capability (as of the last `capabilities()`)."""
    return _providers.get(capability)


def plugin_rows() -> list[dict]:
    """One row per loaded or failed plugin, for `gpt2reg plugins`."""
    found = capabilities()  # first: a plugin that fails here is listed as failed, not loaded
    manager = load_plugins()
    rows = []
    for name, plugin in manager.list_name_plugin():
        rows.append(
            {
                "name": name,
                "status": "loaded",
                "source": _sources.get(name, "built-in" if name in DEFAULT_PLUGINS else "registered"),
                "hooks": sorted(h.name for h in manager.get_hookcallers(plugin) or []),
                "capabilities": sorted(c for c in found if _providers.get(c) == name),
                "error": None,
            }
        )
    for failure in _failures.values():
        rows.append({"name": failure.plugin, "status": "failed", "source": failure.source, "hooks": [],
                     "capabilities": [], "error": failure.reason, "failed_in": failure.stage})
    return rows


def _reset_for_tests() -> None:
    """Forget loaded plugins so a test can load again under other settings."""
    global _loaded, pm
    _loaded = False
    _failures.clear()
    _unreported.clear()
    _sources.clear()
    _providers.clear()
    pm = pluggy.PluginManager("gpt2reg")
    pm.add_hookspecs(hookspecs)

