"""`gpt2reg NAME` for every capability, made from its options alone.

A capability declares its options once (`registry.options`); this module
turns the declaration into a click command with the same flags, help,
`--json`, store options and exit codes for built-in and third-party
capabilities alike. The command then does what every capability command
does: check the options and paths before anything heavy is imported, run the
capability through `Registry.run` (the core records the result), keep a
non-variant result when asked (`--log`), and print the capability's JSON
document or its human lines.

Example (a plugin gets `gpt2reg shout TEXT --times N` from this alone):
    >>> from dataclasses import dataclass
    >>> from registry import Capability, CapabilityResult, option
    >>> class Shout(Capability):
    ...     '''Repeat TEXT in capitals.'''
    ...     name = "shout"
    ...     needs_model = False
    ...     @dataclass
    ...     class Options:
    ...         text: str = option(help="What to shout.", argument=True, required=True)
    ...         times: int = option(1, help="How many times.", at_least=1)
    ...     def run(self, context, options):
    ...         return CapabilityResult(output={"text": " ".join([options.text.upper()] * options.times)})
    >>> capability_command(Shout).name
    'shout'
"""

from __future__ import annotations

import inspect
from typing import Any

import click

from registry.options import Declared, declared, parse
from registry.terminal import (
    StreamPrinter,
    as_json,
    check_device,
    check_paths_exist,
    common,
    emit,
    open_registry,
)

_CLICK_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING, object: click.STRING}


def capability_command(capability) -> click.Command:
    """The click command of a `Capability` subclass."""
    items = [item for item in declared(capability.Options) if item.spec.cli]
    params: list[click.Parameter] = []
    if capability.needs_model:
        params.append(click.Argument([capability.reference]))
    params += [_parameter(item) for item in items]
    if capability.operation is not None:
        params.append(click.Option(["--name"], default=None,
                                   help=f"Registered model for the result (default: PARENT-{capability.operation})."))
        params.append(click.Option(["--allow-nonfinite"], is_flag=True,
                                   help="Register the result even if its weights hold NaN or infinite values, "
                                        "tagged with a warning (by default it is refused)."))
    if capability.uses_device:
        params.append(click.Option(["--device"], default="auto", show_default=True,
                                   help="auto | cpu | gpu | multi-gpu | multiworker | tpu"))
    if capability.stream_option:
        params.append(click.Option(["--stream"], is_flag=True, help="Print text as it is produced."))
    if capability.records == "run":
        params.append(click.Option(["--log", "log_result"], is_flag=True,
                                   help="Log the settings and outputs as an MLflow run (a table)."))
    elif capability.records == "metrics":
        params.append(click.Option(["--log/--no-log", "log_result"], default=capability.records_by_default,
                                   show_default=True,
                                   help="Record the figures (and any per-example table) on the variant's MLflow run "
                                        "and lineage."))

    def callback(**values):
        _run_command(capability, items, values)

    command = common(click.Command(capability.name, params=list(params), callback=callback, help=_help(capability)))
    # `common` decorates from the bottom up, so on a made command its options arrive last first.
    command.params = params + command.params[len(params):][::-1]
    return command


def _help(capability) -> str:
    doc = capability.__dict__.get("__doc__")  # its own, not the base class's
    return inspect.cleandoc(doc) if doc else f"Run the {capability.name} capability."


def _parameter(item: Declared) -> click.Parameter:
    spec = item.spec
    if spec.argument:
        if item.kind is list:
            return click.Argument([item.name], nargs=-1, type=_CLICK_TYPES[item.item], required=spec.required)
        return click.Argument([item.name], type=_CLICK_TYPES[item.kind], required=spec.required)
    flag = item.flag
    help_text = spec.help or None
    if item.kind is bool:
        if item.default is False:
            return click.Option([flag, item.name], is_flag=True, default=False, help=help_text)
        # A default of True or None ("decide for me") can be set either way.
        return click.Option([f"{flag}/--no-{flag[2:]}", item.name], default=item.default,
                            show_default=item.default is not None, help=help_text)
    kind = _CLICK_TYPES[item.item if item.kind is list else item.kind]
    # Choices are shown, not enforced by click: `parse` refuses a wrong one with the line every caller gets.
    metavar = spec.metavar or ("[" + "|".join(map(str, spec.choices)) + "]" if spec.choices else None)
    extra = {} if item.kind is list or item.default is None else {"default": item.default, "show_default": True}
    # No `default=None` for "none": click then stops enforcing `required`.
    return click.Option([flag, item.name], type=kind, multiple=item.kind is list,
                        required=spec.required and item.kind is not list, metavar=metavar, help=help_text, **extra)


def _given(values: dict[str, Any]) -> dict[str, Any]:
    """The values the user typed; defaults stay the dataclass's own, declared once."""
    context = click.get_current_context()
    return {name: value for name, value in values.items()
            if context.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}


def _run_command(capability, items: list[Declared], values: dict[str, Any]) -> None:
    reference = values.pop(capability.reference, None) if capability.needs_model else None
    name = values.pop("name", None)
    allow_nonfinite = values.pop("allow_nonfinite", False)
    device = values.pop("device", "auto")
    stream = values.pop("stream", False)
    log = values.pop("log_result", False)
    given = _given({item.name: values[item.name] for item in items})
    for item in items:
        if item.kind is list and item.name in given:
            given[item.name] = list(given[item.name])
        if item.spec.required and item.kind is list and not given.get(item.name):
            # Checked here, not by click: for a repeatable option click says "Missing parameter: data".
            raise click.UsageError(f"Missing option '{item.flag}'.")
    # Judged before TensorFlow or MLflow load: a typo is answered at once.
    for item in items:
        if item.spec.path and given.get(item.name):
            check_paths_exist(item.flag, given[item.name] if item.kind is list else [given[item.name]])
    if capability.uses_device:
        check_device(device)
    printer = StreamPrinter() if stream and not as_json() else None
    if printer is not None:
        given[capability.stream_option] = printer
    options = parse(capability.Options, given, capability.name)

    from registry.capability import CapabilityResult, Outcome

    registry = open_registry(progress=capability.operation is not None)
    done = registry.run(capability.name, reference, options=options, name=name, device=device,
                        allow_nonfinite=allow_nonfinite)
    instance = capability()
    if capability.operation is not None and isinstance(done, CapabilityResult):
        # A worker of a cluster that is not its chief: it trained its share, the chief records.
        steps = done.metrics.get("train_steps")
        emit({"recorded": False, "metrics": done.metrics},
             lambda: click.echo(f"worker done: {int(steps or 0)} steps; the chief records the variant"))
        return
    if capability.operation is not None:
        outcome = Outcome(options=options, variant=done)
    else:
        outcome = Outcome(options=options, result=done, streamed=printer is not None)
        if capability.records == "run" and log:
            done.output["run_id"] = outcome.run_id = registry.log_generation(reference, done)
        if capability.needs_model:
            outcome.subject = (registry.record_evaluation(reference, done) if capability.records == "metrics" and log
                               else registry.get(reference))
    document = instance.document(outcome)
    for warning in document.get("warnings", []) if isinstance(document, dict) else []:
        click.echo(f"warning: {warning}", err=True)

    def human():
        from registry.rendering import console, variant_table

        if printer is not None:
            printer.finish()
        if outcome.variant is not None:
            console().print(variant_table([outcome.variant]))
        lines = instance.report(outcome)
        if outcome.variant is None and not lines and printer is None:
            emit(document)  # nothing said in words: the document itself
        for line in lines:
            if isinstance(line, str):
                click.echo(line)
            else:  # a table or another rich renderable
                console().print(line)
        for note in instance.notes(outcome):
            click.echo(note, err=True)

    emit(document, human)


def register_capability_commands(group: click.Group, made: set[str]) -> None:
    """Add a command for each installed capability to `group`; `made` holds the names added before.

    Called at every start of the CLI, after plugins load and before their own commands are
    added (a plugin's hand-written command of the same name wins). A command the group already
    holds by hand (`list`, `show`, ...) is never replaced; a capability whose options cannot make
    a command is reported by name and left to the SDK.
    """
    from registry import plugins

    for name in made:
        group.commands.pop(name, None)
    made.clear()
    for name, capability in sorted(plugins.capabilities().items()):
        if name in group.commands:
            continue
        try:
            group.add_command(capability_command(capability))
        except Exception as error:  # a declaration this module cannot read: the SDK still runs it
            click.echo(f"warning: no command for capability {name!r} ({type(error).__name__}: {error})", err=True)
            continue
        made.add(name)
