"""docs/cli.md, generated from the parser itself so that the reference cannot drift from ``--help``:
``python -m etalage.cli.reference > docs/cli.md`` (a test fails when the file is out of date)."""

from __future__ import annotations

import argparse

SHARED = {"help", "verbose", "quiet", "cache_dir", "config", "print_config"}  # every command has them


def _subcommands(parser) -> dict:
    action = getattr(parser, "_subcommands_action", None)
    return dict(action._name_parser_map) if action is not None else {}


def _leaves(parser, path: tuple[str, ...] = ()):
    """(command path, its parser) of every command, in the order ``etalage --help`` lists them."""
    subs = _subcommands(parser)
    if not subs:
        yield path, parser
        return
    for name, sub in subs.items():
        yield from _leaves(sub, (*path, name))


def _cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(action) -> str:
    d = action.default
    if d is None or d is False or d == argparse.SUPPRESS or d == [] or d == "" or \
            isinstance(action, argparse._CountAction):
        return ""
    return f"`{action.default}`"


def _flag(action) -> str:
    names = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.metavar or action.dest}`"
    if action.choices:
        names += " {" + ",".join(str(c) for c in action.choices) + "}"
    elif action.nargs != 0 and action.metavar:
        names += f" {action.metavar}"
    if action.required:
        names += " (required)"
    return names


def render() -> str:
    """The whole reference, as markdown."""
    from etalage.cli import build_parser

    parser, _ = build_parser()
    out = ["# Command-line reference", "",
           "Generated from the parser (`python -m etalage.cli.reference > docs/cli.md`); `etalage COMMAND --help` "
           "prints the same. Every command also takes `-v` / `-q` (more or less output), `--cache-dir DIR` (where "
           "derived files go) and, where it writes results, `--config FILE` (its options as YAML or JSON; flags "
           "given after it win; each output folder keeps the resolved `config.yaml`). Flags are spelt in full: "
           "prefixes are not accepted.", "", _cell(parser.description), ""]
    leaves = list(_leaves(parser))
    out += ["| command | what it does |", "| --- | --- |"]
    out += [f"| [`etalage {' '.join(p)}`](#etalage-{'-'.join(p)}) | {_cell(_help_line(parser, p))} |" for p, _ in leaves]
    for path, p in leaves:
        out += ["", f"## etalage {' '.join(path)}", "", _cell(p.description or ""), ""]
        rows = [a for a in p._actions if a.dest not in SHARED and a.help != argparse.SUPPRESS]
        if rows:
            out += ["| flag | default | what it does |", "| --- | --- | --- |"]
            out += [f"| {_flag(a)} | {_default(a)} | {_cell(a.help or '')} |" for a in rows]
    return "\n".join(out) + "\n"


def _help_line(parser, path: tuple[str, ...]) -> str:
    """The one-line help a command is listed with."""
    for name in path[:-1]:
        parser = _subcommands(parser)[name]
    action = parser._subcommands_action
    for choice in action._choices_actions:
        if choice.dest == path[-1]:
            return choice.help or ""
    return ""


if __name__ == "__main__":
    print(render(), end="")
