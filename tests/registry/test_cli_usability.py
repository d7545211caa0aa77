"""Small things a user trips on: tables in narrow terminals, shared options before the command.

`gpt2reg` runs in a subprocess here, with its output piped (as in `gpt2reg list | less`,
where rich sizes tables to COLUMNS, or to 80 columns without it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from rich.cells import cell_len

from tests.conftest import REPO

NAMES = ("quickstart-finetune", "quickstart-student-distilled")
COLUMNS = ("ref", "operation", "parents", "parameters", "size", "perplexity", "content hash")
# The contract: the least useful columns go first when a table does not fit.
DROPPED_FIRST = ("content hash", "parents")


def gpt2reg(*args, cwd, columns: int | None = None, pythonpath=()) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "GPT2REG_HOME")}
    if columns is not None:
        environment["COLUMNS"] = str(columns)
    environment["PYTHONPATH"] = os.pathsep.join(
        [*map(str, pythonpath), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-m", "registry.cli", *map(str, args)], capture_output=True, text=True,
                          env=environment, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def named_home(tmp_path_factory, fixture_dir):
    """Two imports of the tiny fixture under the long names a quickstart gives its variants."""
    from registry import Registry

    home = tmp_path_factory.mktemp("long-names")
    reg = Registry(home)
    for name in NAMES:
        reg.import_(name, str(fixture_dir))
    reg.close()
    return home


def _header(table: str) -> list[str]:
    """The column titles, in order, from the table's header row (between the ┃ bars)."""
    row = next(line for line in table.splitlines() if line.startswith("┃"))
    return [cell.strip() for cell in row.strip("┃").split("┃")]


@pytest.mark.parametrize("width", [120, 100, 80, 60])
def test_list_keeps_every_reference_whole_and_drops_the_least_useful_columns(named_home, tmp_path, width):
    done = gpt2reg("list", "--home", named_home, cwd=tmp_path, columns=width)
    assert done.returncode == 0, done.stderr
    table = done.stdout
    for name in NAMES:
        assert f"{name}/1" in table, table
    assert "…" not in table, table  # no cell is cut
    assert max(cell_len(line) for line in table.splitlines()) <= width, table

    shown = _header(table)
    assert shown[0] == "ref", table
    assert shown == [c for c in COLUMNS if c in shown], table  # the order of what is left is kept
    dropped = set(COLUMNS) - set(shown)
    if width >= 120:
        assert dropped == set(), table
    else:
        # Columns go in the stated order, and any other column only after all of those.
        assert dropped, table
        for index, column in enumerate(DROPPED_FIRST):
            if dropped - set(DROPPED_FIRST[:index]):
                assert column in dropped, table


def test_shared_options_go_before_or_after_the_command(named_home, tmp_path):
    expected = [f"{name}/1" for name in NAMES]
    for args in (
        ["--home", named_home, "list", "--json"],
        ["list", "--home", named_home, "--json"],
        ["--json", "--home", named_home, "list"],
        ["--home", named_home, "--json", "list"],
    ):
        done = gpt2reg(*args, cwd=tmp_path)
        assert done.returncode == 0, (args, done.stderr)
        assert sorted(v["ref"] for v in json.loads(done.stdout)["variants"]) == expected, args

    # A table unless --json is given somewhere.
    done = gpt2reg("--home", named_home, "show", "quickstart-finetune", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("┏"), done


def test_the_commands_own_option_wins(named_home, tmp_path):
    other = tmp_path / "another-home"
    done = gpt2reg("--home", other, "list", "--home", named_home, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["variants"]) == len(NAMES)

    done = gpt2reg("--home", named_home, "list", "--home", other, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"variants": []}
    assert not other.exists()  # reading an empty home creates nothing, from either position


@pytest.mark.parametrize("option", ["--tracking-uri", "--lineage-url"])
def test_store_urls_before_the_command_reach_it(tmp_path, option):
    done = gpt2reg(option, "nonsense", "list", cwd=tmp_path)
    assert done.returncode == 2, done
    assert done.stderr.startswith(f"error: {option} 'nonsense' is not a URL") and done.stderr.count("\n") == 1, done

    # The command's own value wins over the group's bad one.
    good = f"sqlite:///{tmp_path / 'team.db'}"
    done = gpt2reg(option, "nonsense", "list", option, good, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr


PLUGIN = """
    import click
    from registry import hookimpl

    @hookimpl
    def register_commands(cli):
        from registry.cli import as_json, common, emit, open_registry

        @cli.command("where")
        @common
        def where():
            '''Print the registry home this command works on.'''
            emit({"home": str(open_registry().home.path)}, lambda: click.echo(f"home: {open_registry().home.path}"))

        @cli.command("where-plain")
        def where_plain():
            '''The same, from a command that does not declare the shared options itself.'''
            emit({"home": str(open_registry().home.path), "json": as_json()})
"""


@pytest.fixture
def plugin_site(tmp_path):
    """A third-party plugin installed as pip would (a module and its entry point), for a subprocess."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "acme_where.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "acme_where-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-where\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[gpt2reg]\nacme-where = acme_where\n")
    return site


def test_plugin_commands_get_the_shared_options_in_both_positions(plugin_site, tmp_path):
    home, other = tmp_path / "team-home", tmp_path / "other-home"

    def where(*args):
        done = gpt2reg(*args, cwd=tmp_path, pythonpath=[plugin_site])
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout

    assert where("--home", home, "where") == f"home: {home}\n"
    assert where("where", "--home", home) == f"home: {home}\n"
    assert json.loads(where("--home", other, "--json", "where", "--home", home)) == {"home": str(home)}
    assert json.loads(where("--home", home, "--json", "where-plain")) == {"home": str(home), "json": True}
