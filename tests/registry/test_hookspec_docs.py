"""Every hook of the plugin contract is documented for plugin authors and exercised by a test.

The hooks are found the way pluggy finds them (`add_hookspecs` on `registry.hookspecs`),
so a hook added later fails here until docs/plugins.md shows its signature and a test uses it.
"""

import inspect
import re
import types

import pluggy

from registry import hookspecs
from tests.conftest import REPO

DOCS = REPO / "docs" / "plugins.md"
TESTS = REPO / "tests"


def hook_signatures(module) -> dict[str, str]:
    """Hook name -> its signature as an author writes it, ``name(arg, ...)``, for each hookspec of `module`."""
    manager = pluggy.PluginManager("gpt2reg")
    manager.add_hookspecs(module)
    callers = {name: caller for name, caller in vars(manager.hook).items() if caller.has_spec()}
    return {name: f"{name}{inspect.signature(getattr(module, name))}" for name in sorted(callers)}


def undocumented(signatures: dict[str, str], docs: str) -> list[str]:
    return [signature for signature in signatures.values() if signature not in docs]


def untested(signatures: dict[str, str], test_sources: list[str]) -> list[str]:
    """Hooks no test implements (``@hookimpl`` over ``def name(``, or ``specname="name"``) or calls (``.hook.name(``)."""
    missing = []
    for name in signatures:
        used = re.compile(
            rf"@(?:\w+\.)*hookimpl(?:\([^)]*\))?\s*\n\s*def {name}\("
            rf"|specname=[\"']{name}[\"']"
            rf"|\.hook\.{name}\("
        )
        if not any(used.search(source) for source in test_sources):
            missing.append(name)
    return missing


def _test_sources() -> list[str]:
    this_file = __file__.replace(".pyc", ".py")
    return [path.read_text(encoding="utf-8") for path in sorted(TESTS.rglob("*.py")) if str(path) != this_file]


def test_every_hook_signature_is_in_the_plugin_guide():
    signatures = hook_signatures(hookspecs)
    assert "register_capabilities" in signatures  # the hooks were found at all
    assert DOCS.is_file(), f"{DOCS.relative_to(REPO)} is missing"
    missing = undocumented(signatures, DOCS.read_text(encoding="utf-8"))
    assert missing == [], f"docs/plugins.md lacks these hook signatures: {missing}"


def test_every_hook_is_implemented_or_called_by_a_test():
    missing = untested(hook_signatures(hookspecs), _test_sources())
    assert missing == [], f"no test implements or calls these hooks: {missing}"


def test_a_new_hook_without_docs_or_tests_is_caught():
    # The checks above against a contract with one hook more than the real one.
    extended = types.ModuleType("extended_hookspecs")
    for name, function in vars(hookspecs).items():
        if callable(function) and hasattr(function, "gpt2reg_spec"):
            setattr(extended, name, function)

    @hookspecs.hookspec
    def on_cancel(capability, reason):
        """A hook nobody documented or tested."""

    extended.on_cancel = on_cancel
    signatures = hook_signatures(extended)
    assert signatures["on_cancel"] == "on_cancel(capability, reason)"
    assert undocumented(signatures, DOCS.read_text(encoding="utf-8")) == ["on_cancel(capability, reason)"]
    assert untested(signatures, _test_sources()) == ["on_cancel"]
