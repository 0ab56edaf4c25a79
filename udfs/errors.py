"""One base for every error streamrec raises on purpose, and what the CLI makes of it.

The CLI prints a :class:`StreamrecError`'s message and exits with its ``exit_code``;
anything else is a bug and keeps its traceback (exit status 1). A :class:`UserError`
is something the user caused and can fix (a flag, a config key, a file, a log, an
artifact): status 2. Classes that callers also catch as ``ValueError`` or
``RuntimeError`` keep that base too, so ``except ValueError`` around a value check
still holds.
"""

from __future__ import annotations


class StreamrecError(Exception):
    """An error raised on purpose, with a message for the person who ran the command."""

    exit_code = 1


class UserError(StreamrecError):
    """Caused by the user's input and fixed by changing it; the message says what to change."""

    exit_code = 2


class InputError(UserError, ValueError):
    """A value the user gave (a flag, a file's content, a log's rows) that cannot be used."""


def reported(exc: BaseException) -> int | None:
    """The exit status of a command that stopped on ``exc``, when ``exc`` is reported as a message
    (no traceback); None for a bug. A missing file is the user's too: the message names its path."""
    if isinstance(exc, StreamrecError):
        return exc.exit_code
    if isinstance(exc, FileNotFoundError):
        return UserError.exit_code
    return None
