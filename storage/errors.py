"""The exception types of ``nas.storage``."""

from __future__ import annotations


class StorageError(Exception):
    """A results-database problem a user can act on (bad URL, unreadable file,
    schema newer than this cellsearch, duplicate search name, ...).

    ``message`` says what happened; ``hint`` (optional) says what to do. ``str()``
    gives both. (Storage is the bottom of the stack, so this is not a
    ``nas.errors.UserError``; the CLI should treat it as one: exit code 2.)
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")
        self.message = message
        self.hint = hint


class SchemaVersionError(StorageError):
    """The database's schema revision is not the one this cellsearch uses.

    ``older`` is True when a migration (``nas db upgrade``) would fix it, False
    when the database was written by a newer cellsearch. ``revisions`` are the
    database's, ``heads`` this cellsearch's.
    """

    def __init__(self, message: str, hint: str | None = None, *, older: bool,
                 revisions: tuple[str, ...] = (), heads: tuple[str, ...] = ()):
        super().__init__(message, hint)
        self.older = older
        self.revisions = tuple(revisions)
        self.heads = tuple(heads)
