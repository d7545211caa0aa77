"""A capability is one declaration: its command, validation, SDK call and docs row come from its options.

The toy capability below is all a plugin writes. The tests use it the way a
user would: through `gpt2reg`, the SDK and the generated reference page.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry import plugins
from registry.plugin_api import Capability, CapabilityResult, UsageError, hookimpl, option
from tests.conftest import REPO, store_snapshot


class Relabel(Capability):
    """Copy REF under a new label; registers the copy."""

    name = "relabel"
    operation = "relabel"

    @dataclass
    class Options:
        label: str = option(required=True, choices=("gold", "silver"), help="The label the copy carries.")
        times: int = option(1, at_least=1, at_most=9, help="How many times the label is written.")
        ratio: float = option(0.5, above=0, below=1, help="A share, recorded as a metric.")
        notes: list[str] = option(default_factory=list, help="Notes kept on the lineage edge (repeatable).")
        loud: bool = option(False, help="Write the label in capitals.")

        def __post_init__(self):
            if self.loud and self.label == "silver":
                raise UsageError("--loud is for gold only; drop --loud or use --label gold")

    def run(self, context, options):
        preset = context.workdir / "preset"
        shutil.copytree(context.parent_preset(), preset, ignore=shutil.ignore_patterns("gpt2reg.json"))
        label = options.label.upper() if options.loud else options.label
        return CapabilityResult(preset_dir=preset, metrics={"ratio": options.ratio},
                                settings={"label": "-".join([label] * options.times), "notes": options.notes},
                                tags={"label": label})

    def report(self, outcome):
        return [f"{outcome.variant.ref} carries {outcome.variant.tags['label']}"]


class RelabelPlugin:
    @hookimpl
    def register_capabilities(self, register):
        register(Relabel)


@pytest.fixture
def relabel_plugin():
    plugins._reset_for_tests()
    plugin = RelabelPlugin()
    plugins.load_plugins().register(plugin, name="acme-relabel")
    yield
    plugins._reset_for_tests()


def test_a_capability_gets_its_command_from_its_options(relabel_plugin, gpt2reg, imported_home):
    assert "relabel" in gpt2reg("--help").stdout
    shown = " ".join(gpt2reg("relabel", "--help").stdout.split())  # as read, whatever the wrapping
    assert "Copy REF under a new label" in shown
    for flag, words in (("--label", "[gold|silver]"), ("--times", "How many times"), ("--notes", "repeatable"),
                        ("--loud", "capitals"), ("--name", "Registered model for the result"), ("--json", "JSON"), ("--home", "home")):
        assert flag in shown and words in shown, (flag, shown)

    made = gpt2reg("relabel", "fx", "--label", "gold", "--times", "2", "--notes", "a", "--notes", "b",
                   "--loud", "--name", "fx-gold", "--json", "--home", imported_home)
    assert made.exit_code == 0, made
    document = made.json()
    assert (document["ref"], document["operation"], document["parents"]) == ("fx-gold/1", "relabel", ["fx/1"])
    assert document["tags"]["label"] == "GOLD" and document["metrics"]["ratio"] == 0.5
    [edge] = [e for e in gpt2reg("lineage", "fx-gold", "--json", "--home", imported_home).json()["edges"]
              if e["child"] == "fx-gold/1"]
    assert edge["settings"]["label"] == "GOLD-GOLD" and edge["settings"]["notes"] == ["a", "b"]

    human = gpt2reg("relabel", "fx", "--label", "silver", "--home", imported_home)
    assert human.exit_code == 0, human
    assert "fx-relabel/1 carries silver" in human.stdout  # the default name, and the capability's own line


@pytest.mark.parametrize("args, message", [
    (["--label", "bronze"], "error: unknown --label 'bronze'; choose one of: gold, silver"),
    (["--label", "gold", "--times", "0"], "error: --times must be in [1, 9] (got 0)"),
    (["--label", "gold", "--ratio", "1"], "error: --ratio must be in (0, 1) (got 1.0)"),
    (["--label", "gold", "--ratio", "nan"], "error: --ratio must be a finite number (got nan)"),
    (["--label", "silver", "--loud"], "error: --loud is for gold only"),
    (["--label", "gold", "--times", "two"], "Error: Invalid value for '--times'"),
    ([], "Error: Missing option '--label'"),
])
def test_bad_options_are_one_line_exit_2_and_change_nothing(relabel_plugin, gpt2reg, imported_home, args, message):
    before = store_snapshot(imported_home)
    result = gpt2reg("relabel", "fx", *args, "--home", imported_home)
    assert result.exit_code == 2, result
    errors = [line for line in result.stderr.splitlines() if line.lower().startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), result.stderr
    assert store_snapshot(imported_home) == before


def test_the_sdk_takes_the_same_names_and_checks(relabel_plugin, imported_home):
    from registry import Registry

    reg = Registry(imported_home)
    made = reg.run("relabel", "fx", label="gold", notes="one note", name="fx-sdk")
    assert made.ref == "fx-sdk/1" and made.tags["label"] == "gold"
    edge = next(e for e in reg.lineage(made)["edges"] if e["child"] == made.ref)
    assert edge["settings"]["notes"] == ["one note"]  # one text for a list option is a list of one
    typed = reg.run("relabel", "fx", options=Relabel.Options(label="silver", times=3), name="fx-typed")
    assert next(e for e in reg.lineage(typed)["edges"] if e["child"] == typed.ref)["settings"]["label"] == \
        "silver-silver-silver"
    with pytest.raises(UsageError, match=r"--times must be a whole number \(got '3'\)"):
        reg.run("relabel", "fx", label="gold", times="3")
    with pytest.raises(UsageError, match="relabel has no option colour"):
        reg.run("relabel", "fx", label="gold", colour="red")
    with pytest.raises(UsageError, match="relabel needs --label"):
        reg.run("relabel", "fx")


def test_the_docs_row_comes_from_the_declaration():
    from registry.capability_docs import capability_section

    section = capability_section(Relabel)
    assert "`gpt2reg relabel REF [OPTIONS]`: makes a variant (lineage operation `relabel`)." in section
    assert "| `--label` | gold \\| silver | required | The label the copy carries. |" in section
    assert "| `--times` | integer, in [1, 9] | `1` | How many times the label is written. |" in section
    assert "| `--notes` | text, repeatable | - | Notes kept on the lineage edge (repeatable). |" in section
    assert "| `--name` | text | `PARENT-relabel` | Registered model for the result. |" in section


def test_the_committed_capabilities_page_is_what_the_declarations_give():
    from registry.capability_docs import builtin_capabilities, capabilities_page

    committed = (Path(REPO) / "docs" / "capabilities.md").read_text(encoding="utf-8")
    assert committed == capabilities_page(builtin_capabilities()), \
        "docs/capabilities.md is stale: run `python -m registry.capability_docs > docs/capabilities.md`"


def test_every_builtin_option_has_help_and_the_served_params_are_generates():
    from registry.capability_docs import builtin_capabilities
    from registry.options import declared, served_params

    found = builtin_capabilities()
    assert sorted(found) == ["distill", "evaluate", "export", "finetune", "generate", "lora", "merge", "quantize",
                             "tokenize"]
    for name, capability in found.items():
        for item in declared(capability.Options):
            assert item.spec.help, f"{name} option {item.name} has no help"
    assert served_params(found["generate"].Options) == {
        "max_new_tokens": ("long", 32), "min_new_tokens": ("long", 0), "sampler": ("string", "greedy"),
        "temperature": ("double", 1.0), "top_k": ("long", 0), "top_p": ("double", 0.9), "num_beams": ("long", 4),
        "repetition_penalty": ("double", 1.0), "no_repeat_ngram_size": ("long", 0), "stop": ("string", ""),
        "seed": ("long", 0), "runtime": ("string", "auto"),
    }


def test_the_cli_declares_no_capability_options():
    """The built-in commands are made from the capabilities: cli.py names none of their flags."""
    text = (Path(REPO) / "registry" / "cli.py").read_text(encoding="utf-8")
    for flag in ("--max-new-tokens", "--sampler", "--data", "--rank", "--mode", "--format", "--sparsity"):
        assert flag not in text, flag
