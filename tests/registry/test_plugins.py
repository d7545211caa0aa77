"""Plugins: built-ins load like third-party ones; a broken plugin is reported, never fatal."""

import sys
import textwrap
from dataclasses import dataclass

import pytest

from registry import plugins


@pytest.fixture
def fresh_plugins(monkeypatch):
    plugins._reset_for_tests()
    yield
    plugins._reset_for_tests()


def test_built_in_capabilities_are_plugins(fresh_plugins, gpt2reg):
    result = gpt2reg("plugins", "--json")
    assert result.exit_code == 0, result
    document = result.json()
    assert {"tokenize", "generate", "finetune", "evaluate"} <= set(document["capabilities"])
    names = {row["name"]: row for row in document["plugins"]}
    assert names["plugins.finetune"]["status"] == "loaded"
    assert "register_capabilities" in names["plugins.finetune"]["hooks"]


def test_load_plugins_escape_hatch(fresh_plugins, monkeypatch):
    monkeypatch.setenv("GPT2REG_LOAD_PLUGINS", "plugins.tokenize")
    assert set(plugins.capabilities()) == {"tokenize"}
    plugins._reset_for_tests()
    monkeypatch.setenv("GPT2REG_LOAD_PLUGINS", "")
    assert plugins.capabilities() == {}


def test_a_plugin_that_fails_to_import_is_reported_and_the_cli_still_works(fresh_plugins, monkeypatch, tmp_path, gpt2reg):
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('this plugin is broken')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "DEFAULT_PLUGINS", plugins.DEFAULT_PLUGINS + ("broken_plugin",))
    result = gpt2reg("plugins", "--json")
    assert result.exit_code == 0, result
    failed = [row for row in result.json()["plugins"] if row["status"] == "failed"]
    assert [row["name"] for row in failed] == ["broken_plugin"]
    assert "this plugin is broken" in failed[0]["error"]
    assert gpt2reg("tokenize", "still works", "--json").json()["token_ids"] == [24219, 2499]


def test_an_inline_capability_runs_through_the_sdk_and_hooks_fire(fresh_plugins, imported_home):
    from registry import Capability, CapabilityResult, Registry, hookimpl
    from registry.errors import UsageError

    calls = []

    class CountParameters(Capability):
        name = "count-parameters"

        @dataclass
        class Options:
            scale: int = 1

            def __post_init__(self):
                if self.scale < 1:
                    raise UsageError("scale must be at least 1")

        def run(self, context, *, scale):
            return CapabilityResult(output={"parameters": context.variant.parameters * scale})

    class Plugin:
        @hookimpl
        def register_capabilities(self, register):
            register(CountParameters)

        @hookimpl
        def before_run(self, capability, options):
            calls.append(("before", capability.name, options))

        @hookimpl
        def after_run(self, capability, new_variant):
            calls.append(("after", capability.name, new_variant))

    plugin = Plugin()
    plugins.load_plugins().register(plugin)
    try:
        reg = Registry(imported_home)
        result = reg.run("count-parameters", "fx", scale=2)
        assert result.output == {"parameters": 2 * reg.get("fx").parameters}
        assert calls == [("before", "count-parameters", {"scale": 2}), ("after", "count-parameters", None)]
        with pytest.raises(UsageError, match="has no option"):
            reg.run("count-parameters", "fx", wrong=1)
        with pytest.raises(UsageError, match="scale must be at least 1"):
            reg.run("count-parameters", "fx", scale=0)
    finally:
        plugins.load_plugins().unregister(plugin)


def test_strategy_hook_is_first_result_and_a_plugin_can_override(fresh_plugins):
    sentinel = object()

    class Plugin:
        @plugins.hookspecs.hookimpl
        def select_strategy(self, device):
            return sentinel if device == "my-accelerator" else None

    manager = plugins.load_plugins()
    manager.register(Plugin())
    assert manager.hook.select_strategy(device="my-accelerator") is sentinel
    assert manager.hook.select_strategy(device="cpu") is not sentinel


def test_help_does_not_import_tensorflow_or_mlflow():
    import subprocess

    code = textwrap.dedent(
        """
        import sys
        from registry.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        heavy = [m for m in ("tensorflow", "keras", "keras_hub", "mlflow") if m in sys.modules]
        print("HEAVY:" + ",".join(heavy))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY:\n" in done.stdout or done.stdout.strip().endswith("HEAVY:"), done.stdout[-500:]


def test_a_plugin_can_add_a_command(fresh_plugins, gpt2reg):
    import click

    from registry import hookimpl
    from registry.cli import cli

    class Plugin:
        @hookimpl
        def register_commands(self, cli):
            @cli.command("hello-plugin")
            def hello():
                """Say hello from a plugin."""
                click.echo("hello from a plugin")

    plugin = Plugin()
    plugins.load_plugins().register(plugin)
    try:
        assert "hello-plugin" in gpt2reg("--help").stdout
        assert gpt2reg("hello-plugin").stdout.strip() == "hello from a plugin"
    finally:
        plugins.load_plugins().unregister(plugin)
        cli.commands.pop("hello-plugin", None)
