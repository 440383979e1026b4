"""MkDocs hook: the command-line reference, rendered from the argparse parsers at build time.

`llava_prumerge.cli.build_parser(name)` builds the parser with one subcommand's arguments; its modules import
only the standard library until a command runs, so this needs neither torch nor transformers. The page
`cli.md` holds the marker below, which becomes every subcommand's usage, description and options.
"""

from __future__ import annotations

import argparse
import html
import inspect

MARKER = "<!-- cli-reference -->"


def cell(text: str) -> str:
    """Text for a Markdown table cell: one line, pipes and angle brackets escaped."""
    return html.escape(" ".join(text.split()), quote=False).replace("|", "\\|")


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0].choices[name]


def options_table(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    lines = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help != argparse.SUPPRESS]
        actions = [a for a in actions if not isinstance(a, argparse._SubParsersAction)]
        if not actions:
            continue
        lines += [f"**{cell(group.title or 'arguments')}**", ""]
        if group.description:
            lines += [cell(group.description), ""]
        lines += ["| argument | default | meaning |", "|---|---|---|"]
        for action in actions:
            invocation = formatter._format_action_invocation(action)
            default = action.default
            shown = (
                ""
                if default in (None, False, argparse.SUPPRESS) or isinstance(action, argparse._HelpAction)
                else f"`{default}`"
            )
            meaning = formatter._expand_help(action) if action.help else ""
            lines.append(f"| `{cell(invocation)}` | {shown} | {cell(meaning)} |")
        lines.append("")
    return lines


def usage(parser: argparse.ArgumentParser) -> list[str]:
    return ["```text", parser.format_usage().strip(), "```", ""]


def reference() -> str:
    from llava_prumerge import cli

    top = cli.build_parser()
    lines = ["## `llava-prumerge`", "", cell(top.description or ""), "", *usage(top), *options_table(top)]
    lines += ["| command | what it does |", "|---|---|"]
    lines += [
        f"| [`{name}`](#{name}) | {cell(help_text)} |" for name, (_, help_text) in cli.SUBCOMMANDS.items()
    ]
    lines.append("")
    for name in cli.SUBCOMMANDS:
        sub = subparser(cli.build_parser(name), name)
        description = inspect.cleandoc(sub.description or "")
        lines += [f"## `{name}` {{#{name}}}", "", *usage(sub), "```text", description, "```", ""]
        lines += options_table(sub)
    return "\n".join(lines)


def on_page_markdown(markdown, page, config, files):
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, reference())
