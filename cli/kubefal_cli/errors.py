"""The one error type commands raise: what went wrong, and what to do next.

``kubefal`` catches :class:`CliError` at the top (``main.main``) and prints both parts, so every
failure a user can hit ends with a next step instead of a traceback.
"""

from __future__ import annotations


class CliError(Exception):
    """A failure the user can act on."""

    def __init__(self, message: str, *, hint: str, details: str = "", exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details
        self.exit_code = exit_code
