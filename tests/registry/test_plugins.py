"""Plugins: built-ins load like third-party ones; a broken plugin is reported, never fatal."""

import sys
import textwrap
from dataclasses import dataclass

import pytest

from registry import plugins
from tests.conftest import store_snapshot


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
    from registry.options import as_dict

    calls = []

    class CountParameters(Capability):
        name = "count-parameters"

        @dataclass
        class Options:
            scale: int = 1

            def __post_init__(self):
                if self.scale < 1:
                    raise UsageError("scale must be at least 1")

        def run(self, context, options):
            return CapabilityResult(output={"parameters": context.variant.parameters * options.scale})

    class Plugin:
        @hookimpl
        def register_capabilities(self, register):
            register(CountParameters)

        @hookimpl
        def before_run(self, capability, options):
            calls.append(("before", capability.name, as_dict(options)))

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


# ---------------------------------------------------------------- broken third-party plugins


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """Install a one-module plugin as a distribution with a `gpt2reg` entry point, as pip would."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    installed = []

    def install(entry_point: str, module: str, source: str) -> None:
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{module}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[gpt2reg]\n{entry_point} = {module}\n")
        installed.append(module)

    yield install
    for module in installed:
        sys.modules.pop(module, None)


SHOUT = """
    import click
    from registry import Capability, CapabilityResult, hookimpl

    class Shout(Capability):
        name = "shout"
        needs_model = False

        def run(self, context, options):
            return CapabilityResult(output={"text": "HELLO"})
"""

BROKEN_PLUGINS = {
    "raises at import": (
        "raise ImportError('acme needs the acme-sdk package')\n",
        "import", "failed to import: ImportError: acme needs the acme-sdk package",
    ),
    "exits at import": (
        "raise SystemExit('acme: no licence found')\n",
        "import", "failed to import: SystemExit: acme: no licence found",
    ),
    "wrapper on a lifecycle hook": (
        SHOUT + """
    @hookimpl(wrapper=True)
    def after_run(capability):
        return (yield)
""",
        "registration", "hook 'after_run' cannot be a wrapper",
    ),
    "misspelt hook": (
        SHOUT + """
    @hookimpl
    def register_capabilitys(register):
        register(Shout)
""",
        "registration", "unknown hook 'register_capabilitys' (did you mean 'register_capabilities'?)",
    ),
    "wrong signature": (
        SHOUT + """
    @hookimpl
    def before_run(capability, varient):
        pass
""",
        "registration", "Argument(s) {'varient'} are declared in the hookimpl but can not be found in the hookspec",
    ),
    "register_capabilities raises": (
        SHOUT + """
    @hookimpl
    def register_capabilities(register):
        register(Shout)
        raise ValueError("acme.toml is missing")
""",
        "register_capabilities", "failed in register_capabilities: ValueError: acme.toml is missing",
    ),
    "register_commands raises": (
        SHOUT + """
    @hookimpl
    def register_commands(cli):
        @cli.command("acme-hello")
        def hello():
            click.echo("hello")
        raise RuntimeError("acme commands are broken")
""",
        "register_commands", "failed in register_commands: RuntimeError: acme commands are broken",
    ),
}


@pytest.mark.parametrize("case", BROKEN_PLUGINS)
def test_a_broken_plugin_is_disabled_and_reported_and_the_cli_still_works(case, fresh_plugins, install_plugin, gpt2reg):
    source, stage, reason = BROKEN_PLUGINS[case]
    install_plugin("acme", "acme_plugin", source)

    listed = gpt2reg("plugins", "--json")
    assert listed.exit_code == 0, listed
    warnings = [line for line in listed.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: plugin 'acme' ") and reason in warnings[0], listed
    rows = {row["name"]: row for row in listed.json()["plugins"]}
    assert rows["acme"]["status"] == "failed" and rows["acme"]["failed_in"] == stage
    assert reason in rows["acme"]["error"]
    assert rows["acme"]["source"] == "acme_plugin 1.0"
    assert rows["plugins.tokenize"]["status"] == "loaded"
    capabilities = listed.json()["capabilities"]
    assert "shout" not in capabilities and {"tokenize", "finetune"} <= set(capabilities)

    assert gpt2reg("tokenize", "still works", "--json").json()["token_ids"] == [24219, 2499]
    assert "acme-hello" not in gpt2reg("--help").stdout


def test_the_escape_hatch_recovers_a_broken_install(fresh_plugins, install_plugin, gpt2reg, monkeypatch, imported_home):
    install_plugin("acme", "acme_commands", SHOUT + """
    @hookimpl
    def register_commands(cli):
        raise RuntimeError("acme commands are broken")
""")
    broken = gpt2reg("tokenize", "hi", "--json")
    assert broken.exit_code == 0 and "plugin 'acme' failed in register_commands" in broken.stderr

    plugins._reset_for_tests()
    monkeypatch.setenv("GPT2REG_LOAD_PLUGINS", "")
    listed = gpt2reg("plugins", "--json")
    assert listed.exit_code == 0 and listed.json() == {"plugins": [], "capabilities": []}
    assert "warning" not in listed.stderr
    store = gpt2reg("list", "--json", "--home", imported_home)
    assert store.exit_code == 0 and "fx/1" in [v["ref"] for v in store.json()["variants"]]

    plugins._reset_for_tests()
    monkeypatch.setenv("GPT2REG_LOAD_PLUGINS", "plugins.tokenize")
    only_tokenize = gpt2reg("tokenize", "hi", "--json")
    assert only_tokenize.exit_code == 0 and only_tokenize.stderr == ""
    assert only_tokenize.json()["token_ids"] == [5303]


@pytest.mark.parametrize("hook", ["before_run", "after_run"])
def test_a_lifecycle_hook_that_raises_disables_its_plugin_not_the_run(hook, fresh_plugins, gpt2reg):
    from registry import hookimpl

    class Watcher:
        def broken(self):
            raise RuntimeError("the acme dashboard is down")

    setattr(Watcher, hook, hookimpl(specname=hook)(lambda self: self.broken()))
    plugins.load_plugins().register(Watcher(), name="acme-watch")

    result = gpt2reg("tokenize", "hi", "--json")
    assert result.exit_code == 0 and result.json()["token_ids"] == [5303]
    assert result.stderr.splitlines() == [
        (f"warning: plugin 'acme-watch' failed in {hook}: RuntimeError: the acme dashboard is down; "
         "it is disabled (see `gpt2reg plugins`)")
    ]
    rows = {row["name"]: row for row in gpt2reg("plugins", "--json").json()["plugins"]}
    assert rows["acme-watch"]["status"] == "failed" and rows["acme-watch"]["failed_in"] == hook
    assert gpt2reg("tokenize", "hi").stderr == ""  # disabled: it is not called again


def _sparsify_plugin(failure):
    """A third-party capability that makes a variant, and a command for it, the way a plugin adds both."""
    import click

    from registry import Capability, CapabilityResult, hookimpl

    class Sparsify(Capability):
        name = "sparsify"
        operation = "sparsify"

        def run(self, context, options):
            (context.workdir / "preset").mkdir()
            (context.workdir / "preset" / "model.weights.h5").write_bytes(b"half written")
            if failure == "raises":
                raise ValueError("zeroed every weight")
            return CapabilityResult(metrics={"sparsity": 1.0})  # no preset_dir: nothing to register

    class AcmeSparsify:
        @hookimpl
        def register_capabilities(self, register):
            register(Sparsify)

        @hookimpl
        def register_commands(self, cli):
            from registry.cli import common, emit, open_registry

            @cli.command("sparsify")
            @click.argument("ref")
            @common
            def sparsify(ref):
                """Zero REF's smallest weights."""
                emit(open_registry().run("sparsify", ref).to_dict())

    return AcmeSparsify()


@pytest.mark.parametrize("failure, error", [
    ("raises", "ValueError: zeroed every weight"),
    ("returns no variant", "TypeError: run returned no folder for the new variant (preset_dir=None)"),
])
def test_a_failing_capability_is_a_failed_run_that_registers_nothing(failure, error, fresh_plugins, imported_home,
                                                                     gpt2reg):
    from registry import Registry, hookimpl
    from registry.capability import CapabilityFailed
    from registry.cli import cli

    seen = []

    class Alerts:
        @hookimpl
        def on_run_error(self, capability, error):
            seen.append((capability.name, error))

    class BrokenAlerts:
        @hookimpl
        def on_run_error(self):
            raise ConnectionError("pager unreachable")

    manager = plugins.load_plugins()
    manager.register(_sparsify_plugin(failure), name="acme-sparsify")
    manager.register(Alerts(), name="acme-alerts")
    manager.register(BrokenAlerts(), name="acme-pager")
    before = store_snapshot(imported_home)
    try:
        result = gpt2reg("sparsify", "fx", "--home", imported_home)
    finally:
        cli.commands.pop("sparsify", None)

    assert result.exit_code == 1, result
    message = f"plugin 'acme-sparsify' failed in capability 'sparsify': {error}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {message} (set GPT2REG_DEBUG=1 for the traceback)"], result.stderr
    assert "warning: plugin 'acme-pager' failed in on_run_error: ConnectionError: pager unreachable" in result.stderr
    [(capability, raised)] = seen
    assert capability == "sparsify" and isinstance(raised, CapabilityFailed) and raised.plugin == "acme-sparsify"

    after = store_snapshot(imported_home)
    assert after["variants"] == before["variants"] and after["versions"] == before["versions"]
    assert after["files"] == before["files"]  # nothing left in staging, no artifacts
    [run_id] = set(after["runs"]) - set(before["runs"])
    run = Registry(imported_home).tracker.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["gpt2reg.error"] == message
    assert run.data.tags["gpt2reg.plugin"] == "acme-sparsify" and run.data.tags["gpt2reg.parent"] == "fx/1"
    assert gpt2reg("tokenize", "still works", "--json").json()["token_ids"] == [24219, 2499]


def test_a_failing_capability_without_a_variant_names_its_plugin_and_records_nothing(fresh_plugins, tmp_path):
    from registry import Capability, CapabilityResult, Registry, hookimpl
    from registry.capability import CapabilityFailed

    class Average(Capability):
        name = "average-length"
        needs_model = False

        @dataclass
        class Options:
            words: list

        def run(self, context, options):
            return CapabilityResult(output={"average": sum(map(len, options.words)) / len(options.words)})

    class AcmeStats:
        @hookimpl
        def register_capabilities(self, register):
            register(Average)

    plugins.load_plugins().register(AcmeStats(), name="acme-stats")
    reg = Registry(tmp_path / "home")
    assert reg.run("average-length", words=["ab", "abcd"]).output == {"average": 3}
    with pytest.raises(CapabilityFailed) as raised:
        reg.run("average-length", words=[])
    assert str(raised.value) == "plugin 'acme-stats' failed in capability 'average-length': ZeroDivisionError: division by zero"
    assert isinstance(raised.value.__cause__, ZeroDivisionError)
    assert not (tmp_path / "home").exists()
