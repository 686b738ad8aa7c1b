"""``--help`` everywhere: every option of every command has help that shows its default,
and every command has an example in its epilog that the parser accepts."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys

import pytest

from meltica.cli import _Help, build_parser


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"": parser, **sub.choices}


COMMANDS = _commands()


def _examples(parser: argparse.ArgumentParser) -> list[str]:
    """The example commands of the epilog (``example:`` or ``examples:``), each on one line
    (a line ending with a backslash continues on the next)."""
    epilog = parser.epilog or ""
    match = re.search(r"^examples?:\n", epilog, re.MULTILINE)
    assert match, f"{parser.prog}: no 'example:' in the epilog"
    body = re.sub(r"\\\n\s*", " ", epilog[match.end() :])
    return [line.strip() for line in body.splitlines() if line.startswith("  meltica-engine ")]


@pytest.mark.parametrize("name", list(COMMANDS), ids=[n or "meltica-engine" for n in COMMANDS])
def test_every_option_has_help_with_its_default(name: str) -> None:
    parser = COMMANDS[name]
    formatter = _Help(parser.prog)
    checked = 0
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        if isinstance(action, argparse._SubParsersAction):
            continue
        assert action.help, f"{parser.prog} {action.dest}: no help"
        if not action.option_strings or action.required:
            continue  # positionals and required options have no default to show
        shown = formatter._expand_help(action)
        assert "default" in shown, f"{parser.prog} {action.option_strings[0]}: {shown!r}"
        if action.default not in (None, argparse.SUPPRESS, [], ()) and not isinstance(
            action.default, bool
        ):
            # the value itself is shown, unless the help states its default in words
            assert re.search(r"\(default:? |default\)", shown), shown
        checked += 1
    assert checked > 0


@pytest.mark.parametrize("name", list(COMMANDS), ids=[n or "meltica-engine" for n in COMMANDS])
def test_every_command_has_an_example_the_parser_accepts(name: str) -> None:
    examples = _examples(COMMANDS[name])
    assert examples, f"{name}: no example command in the epilog"
    runnable = [e for e in examples if "COMMAND" not in e and "--help" not in e]
    assert runnable
    for example in runnable:
        argv = shlex.split(example, comments=True)[1:]
        if name:
            assert argv[0] == name, example
        args = build_parser().parse_args(argv)  # exits (fails the test) on a bad example
        assert callable(args.func)


def test_help_through_the_real_cli_shows_defaults_and_the_example() -> None:
    for name in ("replay", "record", "ctl", "demo"):
        proc = subprocess.run(
            [sys.executable, "-m", "meltica", name, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "100"},
        )
        assert proc.returncode == 0, proc.stderr
        assert "(default: " in proc.stdout
        assert f"example:\n  meltica-engine {name} " in proc.stdout
