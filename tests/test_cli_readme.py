"""The README's commands: `crosslayer demo` runs as typed, every command of the "Command line" table parses, and the
help of every command documents every option (with its default) and ends with examples."""

import re
import shlex
from pathlib import Path

import pytest

from _cli import run_cli

README = Path(__file__).resolve().parents[1] / "README.md"
# placeholders of the table, as a user would fill them in
FILLED = {"M": "crosslayer", "B": "mobilenet_v2", "FOLDER|CSV": "photos/", "QUERY...": "query.jpg", "DIR...": "d/"}


def readme_table_commands() -> list[str]:
    text = README.read_text()
    table = text.split("## Command line", 1)[1].split("\n## ", 1)[0]
    return [row.split("`")[1] for row in table.splitlines() if row.startswith("| `crosslayer")]


def test_readme_demo_runs_as_typed():
    pytest.importorskip("torch")
    pytest.importorskip("skimage")
    assert "crosslayer demo" in README.read_text().split("## Two commands", 1)[1].split("\n## ", 1)[0]
    done = run_cli("demo")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "top ImageNet classes" in done.stdout and "sign code" in done.stdout
    # the cropped cat's nearest neighbour is the cat
    assert re.search(r"chelsea cropped -> chelsea \(score \d+\)", done.stdout), done.stdout


def test_every_command_of_the_readme_table_parses():
    from crosslayer.commands import build_parser

    commands = readme_table_commands()
    assert len(commands) >= 9
    for command in commands:
        words = []
        for word in shlex.split(command.replace("\\|", "|"))[1:]:
            word = FILLED.get(word, word).strip("[]")
            if word and word != "...":
                words.append(word)
        args, unknown = build_parser().parse_known_args(words)
        assert not unknown and callable(args.run), command


def _leaf_parsers(parser, path=()):
    import argparse

    children = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not children:
        yield " ".join(path), parser
    for action in children:
        for name, child in action.choices.items():
            yield from _leaf_parsers(child, path + (name,))


def test_every_option_has_help_with_its_default_and_every_command_examples():
    import argparse

    from crosslayer.commands import build_parser

    leaves = dict(_leaf_parsers(build_parser()))
    assert set(leaves) >= {"demo", "info", "export", "extract", "index build", "index add", "index ls", "index rm",
                           "index compact", "index verify", "index export", "index rebase", "search", "heatmap",
                           "eval classify", "eval retrieve"}
    for name, parser in leaves.items():
        assert parser.epilog and parser.epilog.startswith("examples:") and f"crosslayer {name}" in parser.epilog, name
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"crosslayer {name} {action.option_strings or action.dest}: no help"
            if action.option_strings and action.default not in (None, False):
                assert "default" in parser._get_formatter()._get_help_string(action), (name, action.dest)
        if any(action.option_strings and action.default not in (None, False, argparse.SUPPRESS)
               for action in parser._actions):
            assert "(default: " in text, name
