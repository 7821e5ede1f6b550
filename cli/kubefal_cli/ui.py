"""Rich consoles shared by the commands.

Data a script may capture (env lines, YAML, tables) goes to stdout; progress, notes and errors go
to stderr, so ``kubefal render ... > app.yaml`` and ``kubefal run ... | tee`` stay clean.
"""

from __future__ import annotations

import os

import rich.console
import rich.text

from kubefal_cli import errors

NON_TERMINAL_WIDTH = 200
"""Width of tables and wrapped text when output goes to a pipe or file (rich's default is 80,
which would truncate table cells that scripts grep for)."""

stdout = rich.console.Console(highlight=False, soft_wrap=True)
stderr = rich.console.Console(stderr=True, highlight=False)
for _console in (stdout, stderr):
    if not _console.is_terminal and "COLUMNS" not in os.environ:
        _console.width = NON_TERMINAL_WIDTH


def show_error(error: errors.CliError) -> None:
    """Print the error, its details and the next step, unwrapped so paths can be copied."""
    text = rich.text.Text()
    text.append("Error: ", style="bold red")
    text.append(error.message, style="bold")
    if error.details:
        text.append("\n")
        text.append(error.details.rstrip(), style="dim")
    text.append("\nNext: ", style="bold cyan")
    text.append(error.hint)
    stderr.print(text, soft_wrap=True)


def note(message: str) -> None:
    stderr.print(message)
