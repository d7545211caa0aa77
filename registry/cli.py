"""The `gpt2reg` command line.

Every command takes `--home` and `--json` (before or after its name); exit
codes: 0 success, 2 bad usage or bad input (one line naming the problem and the
fix), 1 other failure.
Heavy libraries (TensorFlow, MLflow) are imported inside the commands that
need them, so `gpt2reg --help` starts fast.
"""

from __future__ import annotations

import gc
import os
import sys

import click

from registry.capability import CapabilityFailed
from registry.errors import RegistryError, UsageError, one_line
from registry.rendering import console, human_size, lineage_tree, print_variant_table, variant_table

# Public for plugins that write commands of their own (`from registry.cli import common, emit, open_registry`).
from registry.terminal import as_json, common, emit, masked_output, open_registry

__all__ = ["cli", "main", "common", "emit", "open_registry", "as_json"]


# ---------------------------------------------------------------- the group


def _set_verbose(ctx, param, value):
    if value:
        from backends import quiet

        quiet.set_verbose(True)
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="gpt2-registry")
@click.option("--verbose", is_flag=True, expose_value=False, is_eager=True, callback=_set_verbose,
              help="Let TensorFlow, XLA, absl and Keras log to the terminal (as GPT2REG_VERBOSE=1 does).")
@common
def cli():
    """gpt2reg: a registry of GPT-2 variants with lineage, on MLflow and KerasHub.

    --home, --tracking-uri, --lineage-url and --json go before the command or after it.
    """


def _register_plugin_commands() -> None:
    # One plugin at a time: a plugin whose register_commands raises is disabled, and a command
    # it added before failing is taken back (it would call into a plugin that is not loaded).
    try:
        from registry import plugins

        for impl in plugins.implementations("register_commands"):
            commands = dict(cli.commands)
            worked, _ = plugins.call_guarded(impl, "register_commands", cli=cli)
            if not worked:
                cli.commands = commands
    except Exception as error:  # the plugin machinery itself (unreadable package metadata)
        print(f"warning: plugins could not be loaded: {error}; set GPT2REG_LOAD_PLUGINS= to load none",
              file=sys.stderr)


def _warn_about_failed_plugins() -> None:
    from registry.plugins import new_failures

    for failure in new_failures():
        click.echo(f"warning: {failure}; it is disabled (see `gpt2reg plugins`)", err=True)


# The commands made from capabilities at the last start, replaced at the next (tests start the CLI many
# times in one process, with different plugins loaded).
_capability_commands: set[str] = set()


def _register_capability_commands() -> None:
    try:
        from registry.commands import register_capability_commands

        register_capability_commands(cli, _capability_commands)
    except Exception as error:  # the plugin machinery itself (unreadable package metadata)
        print(f"warning: capabilities could not be loaded: {error}; set GPT2REG_LOAD_PLUGINS= to load none",
              file=sys.stderr)


def main(argv=None) -> None:
    # Whatever a command or a library prints, a URL's password or a token never reaches the terminal.
    with masked_output():
        _main(argv)


# Commands that only read the store. No hook takes part in them, and loading the plugins (importing
# importlib.metadata and every plugin's module) would be half of their start-up: they do without.
STORE_READS = frozenset({"list", "show", "lineage"})
_GROUP_OPTIONS_WITH_VALUES = ("--home", "--tracking-uri", "--lineage-url")


def _command_name(argv) -> str | None:
    """The command `argv` runs, read past the group's own options; None when that is unclear."""
    args = iter(sys.argv[1:] if argv is None else argv)
    for arg in args:
        if arg in _GROUP_OPTIONS_WITH_VALUES:
            next(args, None)
        elif arg in ("--json", "--verbose") or arg.split("=", 1)[0] in _GROUP_OPTIONS_WITH_VALUES:
            continue
        else:
            return None if arg.startswith("-") else arg
    return None


def _terminate_as_interrupt() -> None:
    """SIGTERM (`kill`, a scheduler stopping a job) ends a command as Ctrl-C does: the work's MLflow run
    is ended as KILLED with its last figures and nothing half-made is left, where Python's default
    would end the process at once."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def _main(argv) -> None:
    from backends import quiet  # before any plugin or command can import TensorFlow

    quiet.install()
    _terminate_as_interrupt()
    with_plugins = _command_name(argv) not in STORE_READS
    if with_plugins:
        _register_capability_commands()
        _register_plugin_commands()
        _warn_about_failed_plugins()
    collecting = gc.isenabled()
    if not with_plugins:
        # A read of a big store makes tens of thousands of small objects and no cycles among them: the
        # cycle collector's passes over them were a tenth of `list --json` of 10,000 variants.
        gc.disable()
    try:
        cli.main(args=argv, prog_name="gpt2reg", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.exceptions.Abort as abort:
        if isinstance(abort.__context__, KeyboardInterrupt):  # click's word for Ctrl-C (and SIGTERM, above)
            click.echo("interrupted", err=True)
            sys.exit(130)
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as error:
        error.show()
        sys.exit(2 if isinstance(error, click.UsageError) or error.exit_code == 2 else error.exit_code)
    except UsageError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    except CapabilityFailed as error:  # a plugin's own code raised: name it, keep the traceback on request
        if os.environ.get("GPT2REG_DEBUG"):
            raise
        click.echo(f"error: {error} (set GPT2REG_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)
    except RegistryError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as error:  # an unexpected failure: one line, exit 1, traceback on request
        if os.environ.get("GPT2REG_DEBUG"):
            raise
        click.echo(f"error: {one_line(error)} (set GPT2REG_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)
    finally:
        if collecting:
            gc.enable()
        if with_plugins:
            _warn_about_failed_plugins()  # plugins disabled while the command ran (a lifecycle hook raised)


# ---------------------------------------------------------------- store commands


@cli.command()
@common
def init():
    """Create the registry home (MLflow store, artifact root, lineage database)."""
    from registry.home import shown_url

    reg = open_registry().init()
    emit({"home": str(reg.home.path), "tracking_uri": shown_url(reg.home.tracking_uri),
          "lineage_url": shown_url(reg.home.lineage_url)},
         lambda: click.echo(f"registry ready at {reg.home.path}"))


@cli.command()
@click.argument("name")
@click.option("--config", "config_name", default="tiny", show_default=True,
              help="tiny | gpt2 | gpt2-medium | gpt2-large | gpt2-xl")
@click.option("--seed", type=int, default=0, show_default=True)
@common
def create(name, config_name, seed):
    """Register a new randomly initialised GPT-2 as NAME."""
    variant = open_registry(progress=True).create(name, config=config_name, seed=seed)
    _emit_variant(variant)


@cli.command("import")
@click.argument("name")
@click.argument("source")
@click.option("--allow-nonfinite", is_flag=True,
              help="Register the weights even if they hold NaN or infinite values, tagged with a warning "
                   "(by default they are refused).")
@common
def import_(name, source, allow_nonfinite):
    """Register SOURCE (KerasHub preset folder, HF checkpoint folder, preset name, hf://org/repo) as NAME."""
    from registry.references import check_import_source

    check_import_source(name, source)
    variant = open_registry(progress=True).import_(name, source, allow_nonfinite=allow_nonfinite)
    _emit_variant(variant)


def _emit_variant(variant):
    def human():
        console().print(variant_table([variant]))
        _print_warnings([variant])

    emit(variant.to_dict(), human)


def _print_warnings(variants) -> None:
    """A line for each variant registered despite a problem (weights that are not finite), so no table hides it."""
    from rich.text import Text

    for variant in variants:
        if variant.tags.get("warning"):
            console().print(Text.assemble(("warning: ", "bold yellow"), f"{variant.ref}: {variant.tags['warning']}"),
                            soft_wrap=True)  # one line, whole, for a reader's grep as much as the eye


@cli.command("list")
@click.argument("name", required=False)
@click.option("--best", "best_metric", default=None,
              help="Only the best variant by this metric (lower perplexity, higher accuracy, ...).")
@click.option("--max-size-mb", type=float, default=None, help="With --best: only variants of at most this size.")
@click.option("--max-parameters", type=int, default=None, help="With --best: only variants with at most this many parameters.")
@common
def list_(name, best_metric, max_size_mb, max_parameters):
    """List variants (all, or the versions of NAME), or the best one under a constraint."""
    reg = open_registry()
    if best_metric is None and (max_size_mb is not None or max_parameters is not None):
        raise UsageError("--max-size-mb and --max-parameters go with --best METRIC (e.g. --best perplexity)")
    if best_metric is not None:
        from registry.sdk import best_of

        listed = reg.list(name)  # once: what Registry.search reads, for both questions
        if best_of(listed, best_metric) is None:  # a metric nobody holds: most likely a typo
            held = sorted({m for v in listed for m in v.metrics})
            raise UsageError(f"no variant has a metric {best_metric!r}; recorded metrics: {', '.join(held) or 'none'}")
        best = best_of(listed, best_metric, max_size_mb=max_size_mb, max_parameters=max_parameters)
        variants = [best] if best is not None else []
        if best is None and not as_json():
            click.echo(f"no variant with {best_metric} is within the limits given")
            return
    elif as_json():
        emit({"variants": reg.list_documents(name)})
        return
    else:
        variants = reg.list(name)

    def human():
        if not variants:
            click.echo("no variants yet")
            return
        print_variant_table(variants)
        _print_warnings(variants)

    emit(lambda: {"variants": [v.to_dict() for v in variants]}, human)


@cli.command()
@click.argument("ref")
@common
def show(ref):
    """Show one variant: REF is NAME, NAME/VERSION or NAME@ALIAS."""
    from registry import model_aliases

    reg = open_registry()
    variant = reg.get(ref)
    document = variant.to_dict()
    # Read from a local MLflow file without importing MLflow where it can be (2 s of a 2.5 s command).
    aliases = model_aliases.aliases(reg.home, variant.name, variant.version)
    document["aliases"] = aliases if aliases is not None else reg.aliases(variant)
    document["preset_path"] = str(reg.preset_path(variant)) if reg.home.is_local else None

    def human():
        out = console()
        out.print(variant_table([variant]))
        out.print(f"aliases: {', '.join(document['aliases']) or '-'}")
        out.print(f"MLflow: {variant.uri} (run {variant.run_id})")
        out.print("metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(variant.metrics.items())))
        _print_warnings([variant])

    emit(document, human)


@cli.command()
@click.argument("ref")
@common
def lineage(ref):
    """Print the family tree of REF: ancestors and descendants with their metrics."""
    graph = open_registry().lineage_graph(ref)
    emit(graph.to_dict, lambda: console().print(lineage_tree(graph)))


@cli.command()
@click.argument("ref")
@click.argument("alias")
@common
def alias(ref, alias):
    """Point ALIAS of REF's model at REF's version (NAME@ALIAS then resolves to it)."""
    variant = open_registry().alias(ref, alias)
    emit({"ref": variant.ref, "alias": f"{variant.name}@{alias}"},
         lambda: click.echo(f"{variant.name}@{alias} -> {variant.ref}"))


# ---------------------------------------------------------------- reading, compared


# Versions are compared with `compare NAME --versions`, not a command of their own: in MLflow's registry,
# comparing versions starts from the model's page with the same "Compare" as runs, and a user who
# knows `compare` looks for it there (`--help` lists it beside the refs).
@cli.command()
@click.argument("refs", nargs=-1, required=True)
@click.option("--metric", default=None,
              help="Quality metric plotted against size and speed, or over versions (default: perplexity); "
                   "a task metric such as hellaswag.accuracy too.")
@click.option("--versions", is_flag=True, default=False,
              help="Compare the versions of one registered model: REF is its NAME; draws --metric by version.")
@click.option("--chart", default=None, help="Also write the chart (PNG) to this file.")
@click.option("--log/--no-log", default=True, show_default=True, help="Log the table and chart to MLflow as a run.")
@common
def compare(refs, metric, versions, chart, log):
    """Side by side: quality against size and speed (Pareto fronts marked), size, parameters and shared
    metrics of each REF, with a chart; or, with --versions, one metric over the versions of NAME."""
    if versions:
        if len(refs) != 1:
            raise UsageError(f"--versions compares the versions of one model, got {len(refs)}: "
                             f"{' '.join(refs)}; give one NAME, or drop --versions to compare these refs")
        document = open_registry().compare_versions(refs[0], metric=metric, log=log, chart=chart)
    else:
        document = open_registry().compare(list(refs), metric=metric, log=log, chart=chart)

    def versions_table(table):
        (series,) = document["panels"]
        table.title = f"{document['model']}: {series['id']} ({series['y']['better']} is better)"
        for column in ("version", "operation", series["y"]["metric"], "size"):
            table.add_column(column, justify="left" if column == "operation" else "right")
        values = {point["ref"]: point["y"] for point in series["points"]}
        for row in document["variants"]:
            ref = row["ref"]
            value = (f"{values[ref]:,.4g}" if ref in values else "-") + (" (best)" if ref == series["best"] else "")
            table.add_row(ref.rsplit("/", 1)[1], row["operation"], value, human_size(row["size_bytes"]))

    def variants_table(table):
        rows = document["variants"]
        table.add_column("")
        for row in rows:
            table.add_column(row["ref"], justify="right")
        table.add_row("operation", *(row["operation"] + (f" ({row['format']})" if row["format"] else "")
                                     for row in rows))
        table.add_row("weights", *(row["weights"] for row in rows))
        table.add_row("parameters", *(f"{row['parameters']:,}" for row in rows))
        table.add_row("size", *(human_size(row["size_bytes"]) for row in rows))
        for name in document["metrics"]:
            table.add_row(name, *(f"{row['metrics'][name]:,.4g}" if name in row["metrics"] else "-" for row in rows))

    def human():
        from rich.table import Table

        out = console()
        table = Table()
        (versions_table if document["compared"] == "versions" else variants_table)(table)
        out.print(table)
        for panel in document["panels"]:
            if panel["kind"] == "scatter":
                lacking = [entry["ref"] for entry in panel["left_out"]]
                out.print(f"Pareto front, {panel['id']}: {', '.join(panel['front'])}"
                          + (f" (left out, no value: {', '.join(lacking)})" if lacking else ""))
        for omitted in document["omitted_panels"]:
            if omitted["kind"] == "scatter":
                out.print(f"no {omitted['id']} panel: {omitted['reason']}")
        if "chart_uri" in document:
            out.print(f"chart: {document['chart_uri']} (MLflow run {document['run_id']})")
        if "chart_file" in document:
            out.print(f"chart written to {document['chart_file']}")

    emit(document, human)


# ---------------------------------------------------------------- the rest


@cli.command()
@click.option("--steps", type=int, default=None, help="Fine-tuning steps (default: sized to finish in a few minutes).")
@click.option("--heldout-tokens", type=int, default=None,
              help="Keep about this many tokens of held-out text (whole documents; default: all, about 9,800); "
                   "every variant is scored on it, so fewer is faster.")
@click.option("--name", default="quickstart", show_default=True)
@common
def quickstart(steps, heldout_tokens, name):
    """The whole pipeline on the embedded default: create, fine-tune, LoRA, merge, quantize, distill, evaluate."""
    from registry.quickstart import run_quickstart

    reg = open_registry(progress=True)
    summary = run_quickstart(reg, name=name, steps=steps, heldout_tokens=heldout_tokens,
                             say=None if as_json() else click.echo)
    if as_json():
        emit(summary)


@cli.command()
@common
def plugins():
    """List loaded plugins, their hooks and capabilities, and plugins that failed (with the reason)."""
    from registry.plugins import plugin_rows

    rows = plugin_rows()
    document = {"plugins": rows, "capabilities": sorted(c for row in rows for c in row["capabilities"])}

    def human():
        from rich.table import Table

        table = Table()
        for column in ("plugin", "status", "source", "capabilities", "hooks / error"):
            table.add_column(column)
        for row in rows:
            table.add_row(row["name"], row["status"], row["source"], ", ".join(row["capabilities"]),
                          row["error"] or ", ".join(row["hooks"]))
        out = console()
        out.print(table)
        out.print("capabilities: " + (", ".join(document["capabilities"]) or "none"))
        if any(row["status"] == "failed" for row in rows):
            out.print("failed plugins are disabled; GPT2REG_LOAD_PLUGINS (a comma list, empty for none) limits what loads")

    emit(document, human)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server processes (MLflow's own default, 4, is for a shared server).")
@common
def ui(host, port, workers):
    """Start the MLflow UI on the home's stores (with --tracking-uri http://..., print the server's own)."""
    import subprocess

    reg = open_registry()
    if reg.home.tracking_server:
        from registry.tracking import check_server_answers

        # The tracking server is the UI already, for every team member: nothing to start.
        check_server_answers(reg.home.tracking_uri)
        url = reg.home.tracking_uri
        experiment = experiment_page(url.rstrip("/"), reg.tracker.experiment_id)
        emit({"url": url, "started": False, "experiment_url": experiment},
             lambda: click.echo(f"MLflow UI: {url} (served by the tracking server itself; open it in a browser)\n"
                                f"the registry's experiment: {experiment}"))
        return
    reg.init()
    experiment = experiment_page(f"http://{host}:{port}", reg.tracker.experiment_id)
    command = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", reg.home.tracking_uri,
        "--default-artifact-root", reg.home.artifact_root.as_uri(), "--host", host, "--port", str(port),
        "--workers", str(workers),
    ]
    # MLflow's GenAI job runners (four more processes) serve nothing the registry records.
    environment = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    click.echo(f"MLflow UI on http://{host}:{port} (Ctrl-C to stop); the registry's experiment: {experiment}", err=True)
    sys.exit(subprocess.call(command, env=environment))


def experiment_page(server: str, experiment_id: str) -> str:
    """The experiment's page in MLflow's model-training view (runs, metrics, models): MLflow 3's UI opens
    every experiment in its GenAI view (traces, judges) unless the address asks for the other."""
    return f"{server}/#/experiments/{experiment_id}?workflowType=machine_learning"


@cli.command()
@click.option("--repair", is_flag=True, help="Remove half-made variants and leftovers (relocates a moved home first).")
@click.option("--relocate", is_flag=True,
              help="Point the stores' recorded locations at this home's folder (a moved or copied home).")
@common
def doctor(repair, relocate):
    """Check that MLflow, the lineage store and the artifacts agree."""
    from registry.doctor import run_doctor
    from registry.relocation import moved_home_problem, relocatable
    from registry.relocation import relocate as relocate_home

    reg = open_registry()
    moved = moved_home_problem(reg.home)
    if moved is not None and not (relocate or repair):
        # Checked before the stores open (opening relocates): every other check would read the old place.
        emit({"home": str(reg.home.path), "variants_checked": 0, "problems": [moved], "running": [],
              "repaired": False, "relocated": None},
             lambda: click.echo(f"- {moved['kind']}: {moved['detail']}"))
        sys.exit(1)
    relocated = relocate_home(reg.home) if relocate or repair else None
    report = {**run_doctor(reg, repair=repair), "relocated": relocated}

    def human():
        if relocated is not None:
            counts = ", ".join(f"{rows} {where}" for where, rows in relocated["rewritten"].items() if rows)
            click.echo(f"relocated: the stored locations under {relocated['from']} now name {relocated['to']} "
                       f"({counts or 'no rows'})")
        elif relocate and not relocatable(reg.home):
            click.echo("nothing to relocate: only a home whose stores are its own SQLite files follows its folder")
        elif relocate:
            click.echo("nothing to relocate: the stores name this home's own artifact store")
        if not report["problems"]:
            click.echo(f"all {report['variants_checked']} variants are complete and consistent")
        for problem in report["problems"]:
            click.echo(f"- {problem['kind']}: {problem['detail']}" + ("  [repaired]" if problem.get("repaired") else ""))
        for work in report.get("running", []):  # live work: never a problem, never repaired
            click.echo(f"- running ({work['what']}): {work['detail']}  [left alone: in progress]")

    emit(report, human)
    if report["problems"] and not repair:
        sys.exit(1)


if __name__ == "__main__":
    main()
