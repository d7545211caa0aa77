"""The plugin manager: built-ins and third-party plugins load the same way.

Built-in plugins are the modules in `DEFAULT_PLUGINS`; third-party plugins
come from the `gpt2reg` entry-point group. `GPT2REG_LOAD_PLUGINS` (a comma
list of module names or entry-point names; empty for none) limits what loads.
A plugin that fails to import is recorded in `failed_plugins()` and reported
by `gpt2reg plugins`; it never breaks the other commands.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import traceback

import pluggy

from registry import hookspecs

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

pm = pluggy.PluginManager("gpt2reg")
pm.add_hookspecs(hookspecs)

_loaded = False
_failures: dict[str, str] = {}
_sources: dict[str, str] = {}


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
        except Exception:
            _failures[module_name] = traceback.format_exc(limit=3)
            continue
        if not pm.is_registered(module):
            pm.register(module, name=module_name)
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if wanted is not None and entry_point.name not in wanted and entry_point.value not in wanted:
            continue
        if pm.get_plugin(entry_point.name) is not None:
            continue
        try:
            plugin = entry_point.load()
        except Exception:
            _failures[entry_point.name] = traceback.format_exc(limit=3)
            continue
        pm.register(plugin, name=entry_point.name)
        if entry_point.dist is not None:
            _sources[entry_point.name] = f"{entry_point.dist.name} {entry_point.dist.version}"
    return pm


def failed_plugins() -> dict[str, str]:
    """Plugin name -> the error that stopped it from loading."""
    load_plugins()
    return dict(_failures)


def plugin_rows() -> list[dict]:
    """One row per loaded or failed plugin, for `gpt2reg plugins`."""
    manager = load_plugins()
    rows = []
    for name, plugin in manager.list_name_plugin():
        rows.append(
            {
                "name": name,
                "status": "loaded",
                "source": _sources.get(name, "built-in" if name in DEFAULT_PLUGINS else "registered"),
                "hooks": sorted(h.name for h in manager.get_hookcallers(plugin) or []),
                "error": None,
            }
        )
    for name, error in _failures.items():
        last_line = error.strip().splitlines()[-1]
        rows.append({"name": name, "status": "failed", "source": "", "hooks": [], "error": last_line})
    return rows


def capabilities() -> dict:
    """Capability name -> class, from every plugin's `register_capabilities`."""
    from registry.capability import Capability

    found: dict[str, type[Capability]] = {}

    def register(capability_class):
        if not (isinstance(capability_class, type) and issubclass(capability_class, Capability)):
            raise TypeError(f"{capability_class!r} is not a Capability subclass")
        found[capability_class.name] = capability_class

    load_plugins().hook.register_capabilities(register=register)
    return found


def _reset_for_tests() -> None:
    """Forget loaded plugins so a test can load again under other settings."""
    global _loaded, pm
    _loaded = False
    _failures.clear()
    _sources.clear()
    pm = pluggy.PluginManager("gpt2reg")
    pm.add_hookspecs(hookspecs)
