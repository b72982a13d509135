"""Errors a user can act on. The CLI turns them into `message` + hint and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (a flag, a value, a file). Exit code 2, no traceback."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class SpaceError(UserError):
    """A problem in a search-space file, located at file:line:col."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 col: int | None = None, hint: str | None = None):
        super().__init__(message, hint)
        self.file = file
        self.line = line
        self.col = col

    @property
    def location(self) -> str:
        parts = [self.file or "<space>"]
        if self.line is not None:
            parts.append(str(self.line))
            if self.col is not None:
                parts.append(str(self.col))
        return ":".join(parts)

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"
