"""The capabilities' reference page, written from their options (`docs/capabilities.md`).

Run `python -m registry.capability_docs > docs/capabilities.md` after changing
a capability's options; a test fails while the committed page differs from
what the declarations give, so the page cannot drift from the code.
"""

from __future__ import annotations

import inspect

from registry.options import markdown_table

HEADER = """# Capabilities

Every capability below is a `gpt2reg` command and a `Registry.run(NAME, ref, **options)`
call with the same options (in Python, the option's name: `--max-new-tokens` is
`max_new_tokens`). Every command also takes `--home`, `--tracking-uri`,
`--lineage-url` and `--json`. This page is written from the capabilities' own
declarations by `python -m registry.capability_docs`; do not edit it by hand.
"""


def capability_section(capability) -> str:
    """One capability: its usage line, what it does, and its options table."""
    usage = ["gpt2reg", capability.name]
    if capability.needs_model:
        usage.append(capability.reference.upper())
    from registry.options import declared

    usage += [f"[{item.name.upper()}]..." for item in declared(capability.Options)
              if item.spec.argument and item.spec.cli]
    extras = []
    if capability.operation is not None:
        extras.append("| `--name` | text | `PARENT-" + capability.operation + "` | Registered model for the result. |")
        extras.append("| `--allow-nonfinite` | flag | - | Register the result even if its weights hold NaN or "
                      "infinite values, tagged with a warning (by default it is refused). |")
    if capability.uses_device:
        extras.append("| `--device` | auto \\| cpu \\| gpu \\| multi-gpu \\| multiworker \\| tpu | `auto` | "
                      "Where it runs (a `tf.distribute` strategy). |")
    if capability.stream_option:
        extras.append("| `--stream` | flag | - | Print text as it is produced. |")
    if capability.records == "run":
        extras.append("| `--log` | flag | - | Log the settings and outputs as an MLflow run (a table). |")
    elif capability.records == "metrics":
        default = "`--log`" if capability.records_by_default else "`--no-log`"
        extras.append(f"| `--log/--no-log` | flag | {default} | Record the figures on the variant's MLflow run "
                      "and lineage. |")
    doc = inspect.cleandoc(capability.__dict__.get("__doc__") or "")
    table = "\n".join([markdown_table(capability.Options), *extras])
    kind = (f"makes a variant (lineage operation `{capability.operation}`)" if capability.operation
            else "makes no variant")
    return f"## `{capability.name}`\n\n`{' '.join(usage)} [OPTIONS]`: {kind}.\n\n{doc}\n\n{table}\n"


def capabilities_page(capabilities: dict) -> str:
    """The whole page for `capabilities` (name -> class), in name order."""
    return "\n".join([HEADER, *(capability_section(capabilities[name]) for name in sorted(capabilities))])


def builtin_capabilities() -> dict:
    """The built-in capabilities by name, whatever other plugins this environment has installed."""
    import importlib

    from registry.plugins import DEFAULT_PLUGINS

    found: dict = {}
    for module_name in DEFAULT_PLUGINS:
        register = getattr(importlib.import_module(module_name), "register_capabilities", None)
        if register is not None:
            register(register=lambda capability: found.setdefault(capability.name, capability))
    return found


def main() -> None:
    print(capabilities_page(builtin_capabilities()), end="")


if __name__ == "__main__":
    main()
