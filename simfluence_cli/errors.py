"""The exception tree. Every error the tool raises on purpose derives from SimfluenceError.

    SimfluenceError            exit code 1 unless stated
    +-- InputError             a log/curriculum/score file is malformed (names file, line/row, field, fix)
    +-- SelectionError         a run selector, test list or ID matched nothing usable
    |   +-- RunNotFoundError   ``runset["id"]``: no such run (also a KeyError)
    +-- StoreError             the store cannot be read or written
    |   +-- StoreLockedError   another process holds the store's write lock
    |   +-- StoreVersionError  the store was written by a newer format version
    |   +-- ConflictError      a run id / model name exists with different content (use --replace)
    +-- ModelError             a fitted model is missing, incompatible or cannot answer
    |   +-- NotFittedError     a Simulator used before fit (or loaded without parameters)
    |   +-- ModelNotFoundError no model of that name in the store (also a KeyError)
    +-- MissingExtraError      an optional extra (e.g. matplotlib) is not installed
    +-- UsageError             exit code 2: options that contradict each other or are malformed

The CLI prints ``str(error)`` as one line on stderr and exits with ``error.exit_code``.
"""

from __future__ import annotations

__all__ = [
    "SimfluenceError",
    "InputError",
    "SelectionError",
    "StoreError",
    "StoreLockedError",
    "StoreVersionError",
    "ConflictError",
    "ModelError",
    "NotFittedError",
    "ModelNotFoundError",
    "RunNotFoundError",
    "MissingExtraError",
    "UsageError",
    "SimfluenceWarning",
]


class SimfluenceError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class InputError(SimfluenceError):
    """Malformed input. The message reads ``FILE:LINE: field 'F': what was wrong; how to fix it``."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ):
        self.path, self.line, self.field, self.hint, self.detail = path, line, field, hint, message
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        what = f"field '{field}': {message}" if field else message
        super().__init__(f"{where}{what}" + (f"; {hint}" if hint else ""))


class SelectionError(SimfluenceError):
    """A selector or ID list matched nothing usable."""


class RunNotFoundError(SelectionError, KeyError):
    """No run with that id (``runset["id"]``); a KeyError too, as mappings raise."""

    def __str__(self) -> str:  # the message, not KeyError's repr of it
        return Exception.__str__(self)


class StoreError(SimfluenceError):
    """The store cannot be read or written."""


class StoreLockedError(StoreError):
    """Another process holds the write lock."""


class StoreVersionError(StoreError):
    """The store's format version is newer than this tool understands."""


class ConflictError(StoreError):
    """A run id or model name already exists with different content."""


class ModelError(SimfluenceError):
    """A model is missing, incompatible with the data, or cannot answer the question."""


class NotFittedError(ModelError):
    """A Simulator method needs a fitted model (or its parameters) and has none."""


class ModelNotFoundError(ModelError, KeyError):
    """No model of that name in the store (``store.models["x"]``, ``load_model``); a KeyError
    too, so ``store.models`` behaves like a mapping."""

    def __str__(self) -> str:  # the message, not KeyError's repr of it
        return Exception.__str__(self)


class MissingExtraError(SimfluenceError):
    """An optional dependency is not installed."""


class UsageError(SimfluenceError):
    """Contradictory or malformed options (exit code 2, like click's usage errors)."""

    exit_code = 2


class SimfluenceWarning(UserWarning):
    """Something the user should know that does not stop the command (a stale lock broken,
    examples whose parameters are not identifiable, ...). The CLI prints it as one
    ``warning: ...`` line on stderr; library users get a normal Python warning."""
