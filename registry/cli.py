"""The `gpt2reg` command line.

Every command takes `--home` and `--json` (before or after its name); exit
codes: 0 success, 2 bad usage or bad input (one line naming the problem and the
fix), 1 other failure.
Heavy libraries (TensorFlow, MLflow) are imported inside the commands that
need them, so `gpt2reg --help` starts fast.
"""

from __future__ import annotations

import json
import os
import sys

import click

from registry.capability import CapabilityFailed, CapabilityResult
from registry.errors import RegistryError, UsageError
from registry.rendering import console, human_size, lineage_tree, variant_table


# ---------------------------------------------------------------- shared options


def _store_option(ctx, param, value):
    # The group and the command share ctx.meta: `gpt2reg --home A list` and `gpt2reg list --home A` both
    # land here, the command's own after the group's, so an option given to the command wins. A default
    # (an option not given) must not overwrite what the group received.
    if value is not None and ctx.get_parameter_source(param.name) is not click.core.ParameterSource.DEFAULT:
        ctx.meta[f"gpt2reg.{param.name}"] = value
    return value


def common(command):
    """Add --home, --tracking-uri, --lineage-url and --json to a command (the group takes them too)."""
    options = [
        click.option("--home", type=click.Path(file_okay=False), default=None, expose_value=False, callback=_store_option,
                     help="Registry home (default: $GPT2REG_HOME or ./mlruns)."),
        click.option("--tracking-uri", default=None, expose_value=False, callback=_store_option,
                     help="MLflow tracking server instead of the home's mlflow.db."),
        click.option("--lineage-url", default=None, expose_value=False, callback=_store_option,
                     help="SQLAlchemy URL of the lineage database instead of the home's lineage.db."),
        click.option("--json", "as_json", is_flag=True, default=False, expose_value=False, callback=_store_option,
                     help="Print one JSON document."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _meta(key, default=None):
    return click.get_current_context().meta.get(f"gpt2reg.{key}", default)


def as_json() -> bool:
    return bool(_meta("as_json", False))


def open_registry(progress: bool = False):
    from registry.sdk import Registry

    reporter = None
    if progress:
        from registry.progress import ProgressReporter

        reporter = ProgressReporter()
    return Registry(_meta("home"), tracking_uri=_meta("tracking_uri"), lineage_url=_meta("lineage_url"), progress=reporter)


def emit(document, human=None) -> None:
    if as_json():
        click.echo(json.dumps(document, indent=2, default=str))
    elif human is not None:
        human()
    else:
        click.echo(json.dumps(document, indent=2, default=str))


# ---------------------------------------------------------------- checks before the heavy imports
# A command that loads a model imports TensorFlow (seconds); input that can be judged without it is
# judged first, so a typo is answered at once. The capabilities check the same things again.


def check_paths_exist(option: str, paths) -> None:
    """Each of `paths` (the values of `option`) names a file or folder that exists."""
    from registry.data import existing_data_path

    for raw in paths or ():
        existing_data_path(raw, option)


def check_device(device: str) -> None:
    """`device` is a built-in one, or a plugin besides the built-in one may provide it."""
    from backends.devices import DEVICES
    from registry import plugins

    if device in DEVICES:
        return
    if all(impl.plugin_name == "plugins.devices" for impl in plugins.implementations("select_strategy")):
        raise UsageError(f"no plugin provides device {device!r}; use {', '.join(DEVICES[:-1])} or {DEVICES[-1]}")


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


def main(argv=None) -> None:
    from backends import quiet  # before any plugin or command can import TensorFlow

    quiet.install()
    _register_plugin_commands()
    _warn_about_failed_plugins()
    try:
        cli.main(args=argv, prog_name="gpt2reg", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.exceptions.Abort:
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
        click.echo(f"error: {type(error).__name__}: {error} (set GPT2REG_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)
    finally:
        _warn_about_failed_plugins()  # plugins disabled while the command ran (a lifecycle hook raised)


# ---------------------------------------------------------------- store commands


@cli.command()
@common
def init():
    """Create the registry home (MLflow store, artifact root, lineage database)."""
    reg = open_registry().init()
    emit({"home": str(reg.home.path), "tracking_uri": reg.home.tracking_uri, "lineage_url": reg.home.lineage_url},
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
@common
def import_(name, source):
    """Register SOURCE (KerasHub preset folder, HF checkpoint folder, preset name, hf://org/repo) as NAME."""
    from registry.references import check_import_source

    check_import_source(name, source)
    variant = open_registry(progress=True).import_(name, source)
    _emit_variant(variant)


def _emit_variant(variant):
    emit(variant.to_dict(), lambda: console().print(variant_table([variant])))


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
        if reg.search(best_metric, name=name) is None:  # a metric nobody holds: most likely a typo
            held = sorted({m for v in reg.list(name) for m in v.metrics})
            raise UsageError(f"no variant has a metric {best_metric!r}; recorded metrics: {', '.join(held) or 'none'}")
        best = reg.search(best_metric, max_size_mb=max_size_mb, max_parameters=max_parameters, name=name)
        variants = [best] if best is not None else []
        if best is None and not as_json():
            click.echo(f"no variant with {best_metric} is within the limits given")
            return
    else:
        variants = reg.list(name)
    emit({"variants": [v.to_dict() for v in variants]},
         lambda: console().print(variant_table(variants)) if variants else click.echo("no variants yet"))


@cli.command()
@click.argument("ref")
@common
def show(ref):
    """Show one variant: REF is NAME, NAME/VERSION or NAME@ALIAS."""
    reg = open_registry()
    variant = reg.get(ref)
    document = variant.to_dict()
    document["aliases"] = reg.aliases(variant)
    document["preset_path"] = str(reg.preset_path(variant)) if reg.home.is_local else None

    def human():
        out = console()
        out.print(variant_table([variant]))
        out.print(f"aliases: {', '.join(document['aliases']) or '-'}")
        out.print(f"MLflow: {variant.uri} (run {variant.run_id})")
        out.print("metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(variant.metrics.items())))

    emit(document, human)


@cli.command()
@click.argument("ref")
@common
def lineage(ref):
    """Print the family tree of REF: ancestors and descendants with their metrics."""
    graph = open_registry().lineage(ref)
    emit(graph, lambda: console().print(lineage_tree(graph)))


@cli.command()
@click.argument("ref")
@click.argument("alias")
@common
def alias(ref, alias):
    """Point ALIAS of REF's model at REF's version (NAME@ALIAS then resolves to it)."""
    variant = open_registry().alias(ref, alias)
    emit({"ref": variant.ref, "alias": f"{variant.name}@{alias}"},
         lambda: click.echo(f"{variant.name}@{alias} -> {variant.ref}"))


# ---------------------------------------------------------------- capabilities


@cli.command()
@click.argument("text")
@click.option("--decode", is_flag=True, help="TEXT is comma- or space-separated token ids: turn them into text.")
@common
def tokenize(text, decode):
    """Token ids and pieces of TEXT under the GPT-2 BPE (no model needed)."""
    options = {"text": text}
    if decode:
        try:
            options = {"token_ids": [int(t) for t in text.replace(",", " ").split()]}
        except ValueError:
            raise UsageError("--decode expects token ids such as '464 2068 7586'") from None
    output = open_registry().run("tokenize", **options).output  # needs no model and touches no store
    emit(output, lambda: _print_tokens(output))


def _print_tokens(output):
    from rich.table import Table

    table = Table()
    table.add_column("#", justify="right")
    table.add_column("id", justify="right")
    table.add_column("piece")
    for index, (token_id, piece) in enumerate(zip(output["token_ids"], output["pieces"])):
        table.add_row(str(index), str(token_id), repr(piece))
    out = console()
    out.print(table)
    out.print(f"{len(output['token_ids'])} tokens")


device_option = click.option("--device", default="auto", show_default=True,
                             help="auto | cpu | gpu | multi-gpu | multiworker | tpu")


@cli.command()
@click.argument("ref")
@click.argument("prompts", nargs=-1)
@click.option("--max-new-tokens", type=int, default=32, show_default=True)
@click.option("--min-new-tokens", type=int, default=0, show_default=True, help="End-of-text is refused before this many.")
@click.option("--sampler", type=click.Choice(["greedy", "beam", "top_k", "top_p", "random", "contrastive"]),
              default="greedy", show_default=True)
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--top-k", type=int, default=None, help="top_k: tokens kept (default 50); contrastive: candidates (default 5).")
@click.option("--top-p", type=float, default=0.9, show_default=True)
@click.option("--num-beams", type=int, default=4, show_default=True)
@click.option("--length-penalty", type=float, default=1.0, show_default=True,
              help="Beam scores are divided by (new tokens) ** this.")
@click.option("--return-all-beams", is_flag=True, help="Also list every beam with its score.")
@click.option("--penalty-alpha", type=float, default=0.6, show_default=True, help="Contrastive search's degeneration penalty.")
@click.option("--repetition-penalty", type=float, default=1.0, show_default=True)
@click.option("--no-repeat-ngram-size", type=int, default=0, show_default=True)
@click.option("--stop", multiple=True, help="Stop at this text and leave it out (repeatable).")
@click.option("--ignore-end-of-text", is_flag=True, help="Keep generating past <|endoftext|>.")
@click.option("--seed", type=int, default=None)
@click.option("--truncate", type=click.Choice(["none", "left"]), default="none", show_default=True,
              help="left: drop the prompt's oldest tokens when it does not fit the context.")
@click.option("--runtime", type=click.Choice(["auto", "keras", "onnx", "litert"]), default="auto", show_default=True,
              help="Where to decode: onnxruntime (int8 kernels for int8 variants), LiteRT or Keras; "
                   "auto: onnx for float32 and int8 variants, keras for the rest.")
@click.option("--xla/--no-xla", default=None,
              help="Compile the Keras decoder with XLA (default: for models of 100M parameters or more).")
@click.option("--stream", is_flag=True, help="Print text as it is produced.")
@click.option("--log", "log_run", is_flag=True, help="Log the settings and outputs as an MLflow run (a table).")
@click.option("--template", default=None, help="Prompt template file with {placeholders} (as evaluate uses).")
@click.option("--vars", "variables", default=None,
              help="JSON object filling the template's placeholders (a list of objects: one prompt each).")
@device_option
@common
def generate(ref, prompts, stream, log_run, template, variables, device, **settings):
    """Continue each PROMPT with the model REF (all prompts in one batch)."""
    registry = open_registry()
    settings["stop"] = list(settings["stop"])
    printer = _StreamPrinter() if stream and not as_json() else None
    result = registry.run("generate", ref, prompts=list(prompts), template=template, vars=variables, device=device,
                          on_text=printer, **settings)
    if log_run:
        result.output["run_id"] = registry.log_generation(ref, result)

    def human():
        if printer is not None:
            printer.finish()
        else:
            for item in result.output["outputs"]:
                click.echo(item["prompt"] + click.style(item["text"], bold=True))
        for item in result.output.get("truncated", []):
            click.echo(f"note: prompt {item['prompt'] + 1} lost its first {item['dropped_tokens']} tokens to fit the context",
                       err=True)
        if "run_id" in result.output:
            click.echo(f"logged as MLflow run {result.output['run_id']}", err=True)

    emit(result.output, human)


class _StreamPrinter:
    """Prints the first unfinished prompt's text as it comes; later prompts' text waits its turn."""

    def __init__(self):
        self.current = 0
        self.pending: dict[int, list[str]] = {}
        self.finished: set[int] = set()

    def __call__(self, event) -> None:
        self.pending.setdefault(event.row, []).append(event.text)
        if event.finish_reason is not None:
            self.finished.add(event.row)
        self._flush()

    def _flush(self) -> None:
        while True:
            pieces = self.pending.pop(self.current, [])
            if pieces:
                click.echo("".join(pieces), nl=False)
            if self.current not in self.finished:
                return
            click.echo()
            self.current += 1

    def finish(self) -> None:
        self._flush()


def training_options(default_lr: float, operation: str):
    """The options `finetune` and `lora` share, with the learning rate that suits each."""
    options = [
        click.option("--data", multiple=True, required=True, help="Text file, folder or JSONL (repeatable)."),
        click.option("--val-data", multiple=True, help="Held-out text (default: the last --val-split of --data)."),
        click.option("--val-split", type=float, default=0.1, show_default=True),
        click.option("--steps", type=int, default=None, help="Optimiser steps (default: one epoch)."),
        click.option("--epochs", type=float, default=None),
        click.option("--batch-size", type=int, default=8, show_default=True, help="Blocks per micro-batch."),
        click.option("--grad-accum", type=int, default=1, show_default=True,
                     help="Micro-batches per update: the update of a batch N times larger."),
        click.option("--seq-len", type=int, default=None, help="Tokens per block (default: context, at most 128)."),
        click.option("--lr", type=float, default=default_lr, show_default=True),
        click.option("--warmup-steps", type=int, default=None, help="Linear warmup (default: 10% of the steps)."),
        click.option("--precision", default="fp32", show_default=True,
                     help="fp32 | bf16 | fp16 (mixed precision; fp16 with loss scaling, GPU only)."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--text-field", default="text", show_default=True, help="JSONL field holding the text."),
        click.option("--eval-every", type=int, default=0, show_default=True,
                     help="Validation loss every N steps (0: only at the end)."),
        click.option("--patience", type=int, default=0, show_default=True,
                     help="Early stopping: stop after N evaluations without a better validation loss (0: off)."),
        click.option("--checkpoint-every", type=int, default=500, show_default=True,
                     help="Checkpoint every N steps, for --resume (0: none)."),
        click.option("--resume", is_flag=True, help="Continue the interrupted run with the same parent, data and options."),
        device_option,
        click.option("--xla/--no-xla", default=None,
                     help="Compile the training step with XLA: slower start, faster steps "
                          "(default: on for models of 100M parameters or more)."),
        click.option("--name", default=None, help=f"Registered model for the result (default: PARENT-{operation})."),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _train(capability: str, ref: str, *, name, device, data, val_data, **options) -> None:
    check_paths_exist("--data", data)
    check_paths_exist("--val-data", val_data)
    check_device(device)
    variant = open_registry(progress=True).run(
        capability, ref, name=name, device=device, data=list(data), val_data=list(val_data) or None, **options
    )
    if isinstance(variant, CapabilityResult):  # a worker that is not the cluster's chief
        emit({"recorded": False, "metrics": variant.metrics},
             lambda: click.echo(f"worker done: {int(variant.metrics['train_steps'])} steps; the chief records the variant"))
        return
    metrics = variant.metrics

    def human():
        console().print(variant_table([variant]))
        if "trainable_parameters" in metrics:
            click.echo(f"trained {int(metrics['trainable_parameters']):,} of {int(metrics['total_parameters']):,} "
                       f"weights ({100 * metrics['trainable_share']:.2f}%)")
        if "teacher_perplexity" in metrics:
            click.echo(f"student: {int(metrics['parameters']):,} parameters, {metrics['parameter_compression']:.2f}x "
                       f"fewer than the teacher; held-out perplexity {metrics['perplexity']:,.2f} "
                       f"against the teacher's {metrics['teacher_perplexity']:,.2f}")
        if "tokens_per_second" in metrics:
            click.echo(f"{int(metrics['train_steps'])} steps, {metrics['tokens_per_second']:,.0f} tokens/s")

    emit(variant.to_dict(), human)


@cli.command()
@click.argument("ref")
@training_options(default_lr=5e-4, operation="finetune")
@common
def finetune(ref, **options):
    """Fine-tune every weight of REF on text; registers the result with its lineage."""
    _train("finetune", ref, **options)


@cli.command()
@click.argument("ref")
@click.option("--rank", type=int, default=8, show_default=True, help="Rank of the LoRA factors.")
@click.option("--alpha", type=float, default=None, help="LoRA scale numerator (default: 2 × rank).")
@click.option("--targets", default="query,value", show_default=True, help="query,value | attention | all")
@click.option("--dropout", type=float, default=0.0, show_default=True, help="Dropout on the adapter's input.")
@click.option("--quantize-base", type=click.Choice(["int8"]), default=None,
              help="Train over an int8 copy of the frozen base (QLoRA-style, Keras int8).")
@training_options(default_lr=2e-3, operation="lora")
@common
def lora(ref, **options):
    """Train a LoRA adapter on REF (frozen); registers an adapter variant pinned to REF."""
    _train("lora", ref, **options)


@cli.command()
@click.argument("teacher_ref")
@click.option("--student-layers", type=int, default=None,
              help="A student of the teacher's shape with K layers, started from every other teacher layer "
                   "(default: half the teacher's layers).")
@click.option("--student-config", default=None, help="A randomly initialised student: tiny | gpt2 | ...")
@click.option("--student-init", default=None, help="A registered variant to start the student from (a second parent).")
@click.option("--temperature", type=float, default=2.0, show_default=True, help="Softening of both distributions.")
@click.option("--alpha", type=float, default=0.5, show_default=True,
              help="Weight of the soft targets; 1 - alpha goes to the text (0: the text alone).")
@training_options(default_lr=5e-4, operation="distill")
@common
def distill(teacher_ref, **options):
    """Train a smaller student on TEACHER_REF's soft targets and the text; registers the student."""
    _train("distill", teacher_ref, **options)


@cli.command()
@click.argument("adapter_ref")
@click.option("--name", default=None, help="Registered model for the result (default: ADAPTER-merge).")
@common
def merge(adapter_ref, name):
    """Fold the LoRA adapter ADAPTER_REF into its base: a full variant with the same outputs."""
    _emit_variant(open_registry(progress=True).run("merge", adapter_ref, name=name))


@cli.command()
@click.argument("ref")
@click.option("--mode", required=True, help="int8 | int4 | float8 | gptq | awq | float16 | bfloat16")
@click.option("--calibration", multiple=True, help="Text to calibrate gptq and awq on (repeatable).")
@click.option("--calibration-samples", type=int, default=32, show_default=True)
@click.option("--eval-data", multiple=True, help="Text for the perplexity before and after (default: embedded held-out text).")
@click.option("--new-tokens", type=int, default=32, show_default=True, help="Tokens per greedy speed measurement.")
@click.option("--name", default=None, help="Registered model for the result (default: PARENT-quantize).")
@common
def quantize(ref, mode, calibration, calibration_samples, eval_data, new_tokens, name):
    """A quantized copy of REF, with size, perplexity and greedy speed before and after."""
    check_paths_exist("--calibration", calibration)
    check_paths_exist("--eval-data", eval_data)
    variant = open_registry(progress=True).run(
        "quantize", ref, name=name, mode=mode, calibration=list(calibration) or None,
        calibration_samples=calibration_samples, eval_data=list(eval_data) or None, new_tokens=new_tokens,
    )
    metrics = variant.metrics

    def human():
        console().print(variant_table([variant]))
        click.echo(f"{mode}: {variant.size_bytes:,} bytes; perplexity {metrics['perplexity']:,.2f}; "
                   f"greedy {metrics['greedy_tokens_per_second']:.1f} tokens/s ({metrics['speedup']:.2f}x the parent)")

    emit(variant.to_dict(), human)


@cli.command()
@click.argument("ref")
@click.option("--format", "format_", required=True, help="keras | hf | savedmodel | tflite | onnx")
@click.option("--out", required=True, help="New (or empty) folder for the exported files.")
@click.option("--quantize", default=None, help="tflite: float16 | int8; onnx: int8 (weights only).")
@click.option("--eval-data", multiple=True, help="Text for the perplexity check (default: embedded held-out text).")
@click.option("--new-tokens", type=int, default=32, show_default=True, help="Tokens per greedy speed measurement.")
@click.option("--name", default=None, help="Registered model for the export (default: PARENT-export).")
@common
def export(ref, format_, out, quantize, eval_data, new_tokens, name):
    """Write REF as FORMAT into OUT, checked in its own runtime against REF; registered as a variant."""
    check_paths_exist("--eval-data", eval_data)
    variant = open_registry(progress=True).run(
        "export", ref, name=name, format=format_, out=out, quantize=quantize,
        eval_data=list(eval_data) or None, new_tokens=new_tokens,
    )
    metrics = variant.metrics

    def human():
        console().print(variant_table([variant]))
        click.echo(f"{format_} ({variant.tags.get('weights')}) in {out}: {variant.size_bytes:,} bytes; "
                   f"largest logit difference {metrics['max_abs_logit_diff']:.2e}, top-1 agreement "
                   f"{metrics['top1_agreement']:.1%}; perplexity {metrics['perplexity']:,.2f}; "
                   f"greedy {metrics['greedy_tokens_per_second']:.1f} tokens/s ({metrics['speedup']:.2f}x the source in Keras)")

    emit({**variant.to_dict(), "out": out}, human)


@cli.command()
@click.argument("refs", nargs=-1, required=True)
@click.option("--chart", default=None, help="Also write the chart (PNG) to this file.")
@click.option("--log/--no-log", default=True, show_default=True, help="Log the table and chart to MLflow as a run.")
@common
def compare(refs, chart, log):
    """Side by side: size, parameters and the recorded metrics of each REF, with a chart."""
    document = open_registry().compare(list(refs), log=log, chart=chart)

    def human():
        from rich.table import Table

        rows = document["variants"]
        table = Table()
        table.add_column("")
        for row in rows:
            table.add_column(row["ref"], justify="right")
        table.add_row("operation", *(row["operation"] + (f" ({row['format']})" if row["format"] else "") for row in rows))
        table.add_row("weights", *(row["weights"] for row in rows))
        table.add_row("parameters", *(f"{row['parameters']:,}" for row in rows))
        table.add_row("size", *(human_size(row["size_bytes"]) for row in rows))
        for metric in document["metrics"]:
            table.add_row(metric, *(f"{row['metrics'][metric]:,.4g}" if metric in row["metrics"] else "-" for row in rows))
        out = console()
        out.print(table)
        if "chart_uri" in document:
            out.print(f"chart: {document['chart_uri']} (MLflow run {document['run_id']})")
        if "chart_file" in document:
            out.print(f"chart written to {document['chart_file']}")

    emit(document, human)


@cli.command()
@click.argument("ref")
@click.option("--data", multiple=True, help="Text file, folder or JSONL for perplexity (repeatable).")
@click.option("--stride", type=int, default=None, help="Sliding-window stride for long texts (default: half the context).")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--text-field", default="text", show_default=True)
@click.option("--task", default=None, help="JSONL task: multiple choice, generation or last word (see README).")
@click.option("--task-name", default=None, help="Prefix of the task's metrics (default: the file's name).")
@click.option("--shots", type=int, default=0, show_default=True, help="Solved examples before each question.")
@click.option("--train", default=None, help="JSONL file the shots come from (default: the task file, minus the question).")
@click.option("--template", default=None, help="Prompt template file with {placeholders}; {answer} marks the answer.")
@click.option("--seed", type=int, default=0, show_default=True, help="Which shots each question gets.")
@click.option("--max-new-tokens", type=int, default=32, show_default=True, help="Generation tasks: tokens per answer.")
@click.option("--stop", default="\n", show_default="newline", help="Generation tasks: the answer ends before this text.")
@click.option("--limit", type=int, default=None, help="Only the first N examples of the task.")
@click.option("--log/--no-log", default=True, show_default=True,
              help="Record the figures (and the per-example table) on the variant's MLflow run and lineage.")
@device_option
@common
def evaluate(ref, log, device, data, **options):
    """Perplexity of REF over text (token-weighted; no token prepended), and task scores."""
    check_device(device)
    reg = open_registry()
    result = reg.run("evaluate", ref, data=list(data), device=device, **options)
    variant = reg.record_evaluation(ref, result) if log else reg.get(ref)
    output = {"ref": variant.ref, **result.output}
    for warning in output.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)

    def human():
        if "tokens" in output:
            click.echo(f"{output['ref']}: perplexity {output['perplexity']:,.3f}  mean NLL {output['mean_nll']:.4f}  "
                       f"{output['bits_per_byte']:.4f} bits per byte  over {int(output['tokens']):,} tokens")
        if "task" in output:
            figures = {k: v for k, v in output["metrics"].items() if k.startswith(output["metric_prefix"] + ".")}
            click.echo(f"{output['ref']}: {output['task']} ({output['task_kind']}, {output['examples']} examples, "
                       f"{output['shots']}-shot): " + "  ".join(f"{k.split('.')[-1]} {v:.4g}" for k, v in figures.items()))

    emit(output, human)


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
        emit({"url": url, "started": False},
             lambda: click.echo(f"MLflow UI: {url} (served by the tracking server itself; open it in a browser)"))
        return
    reg.init()
    command = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", reg.home.tracking_uri,
        "--default-artifact-root", reg.home.artifact_root.as_uri(), "--host", host, "--port", str(port),
        "--workers", str(workers),
    ]
    # MLflow's GenAI job runners (four more processes) serve nothing the registry records.
    environment = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    click.echo(f"MLflow UI on http://{host}:{port} (Ctrl-C to stop)", err=True)
    sys.exit(subprocess.call(command, env=environment))


@cli.command()
@click.option("--repair", is_flag=True, help="Remove half-made variants and leftovers.")
@common
def doctor(repair):
    """Check that MLflow, the lineage store and the artifacts agree."""
    from registry.doctor import run_doctor

    report = run_doctor(open_registry(), repair=repair)

    def human():
        if not report["problems"]:
            click.echo(f"all {report['variants_checked']} variants are complete and consistent")
        for problem in report["problems"]:
            click.echo(f"- {problem['kind']}: {problem['detail']}" + ("  [repaired]" if problem.get("repaired") else ""))

    emit(report, human)
    if report["problems"] and not repair:
        sys.exit(1)


if __name__ == "__main__":
    main()
