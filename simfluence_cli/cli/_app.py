"""The typer application, the shared options and the error-to-exit-code mapping.

Exit codes: 0 ok; 1 data or runtime error (bad input, store problem, model problem);
2 usage error (bad or contradictory options). Messages go to stderr as one line;
tracebacks only with ``--debug`` (or ``SIMFLUENCE_DEBUG=1``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sys
import warnings
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from simfluence_cli.cli._coercion import install as install_plain_coercion
from simfluence_cli.errors import SimfluenceError, SimfluenceWarning, UsageError

GLOBAL_FLAGS = ("-q", "--quiet", "--debug")
# `simfluence --help` lists the commands in the order a session uses them
WORKFLOW_ORDER = (
    "ingest",
    "info",
    "fit",
    "simulate",
    "curriculum",
    "eval",
    "import-scores",
    "top",
    "plot",
    "whatif",
    "groups",
    "design",
    "plan",
    "calibrate",
    "verify",
)


class _Group(TyperGroup):
    """Accepts the global flags (-q/--quiet, --debug) after the subcommand too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for p in self.params:
            install_plain_coercion(p)

    def get_help_option(self, ctx):
        opt = super().get_help_option(ctx)
        if opt is not None:
            install_plain_coercion(opt)
        return opt

    def list_commands(self, ctx):
        """Commands in the order of a session (docs' order), not of module imports."""
        names = super().list_commands(ctx)
        rank = {n: k for k, n in enumerate(WORKFLOW_ORDER)}
        return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))

    def parse_args(self, ctx, args):
        end = args.index("--") if "--" in args else len(args)
        flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
        if flags:
            args = flags + [a for a in args[:end] if a not in GLOBAL_FLAGS] + args[end:]
        try:
            return super().parse_args(ctx, args)
        except Exception as exc:
            one_line_usage_error(exc)
            raise

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except Exception as exc:  # an unknown command (with typer's "Did you mean ...?")
            one_line_usage_error(exc)
            raise


class _Command(TyperCommand):
    """Usage and help show plain metavars (``--model MODEL``, ``CURRICULUM``), not internal
    types (``<str>``, ``<list[str]>``, ``{curriculum}``); enum options keep their choices."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for p in self.params:
            install_plain_coercion(p)  # plain values without pydantic (see cli/_coercion.py)
            if p.metavar is None and not getattr(p, "is_flag", False):
                desc = getattr(p, "type_descriptor", None)
                is_choice = getattr(desc, "is_choice", False)
                choices = getattr(desc, "choices", None) if is_choice else None
                if choices:
                    p.metavar = "[" + "|".join(str(getattr(c, "value", c)) for c in choices) + "]"
                elif p.param_type_name == "argument":
                    p.metavar = (p.name or "value").upper()
                else:
                    longs = [o for o in p.opts if o.startswith("--")] or p.opts
                    p.metavar = longs[0].lstrip("-").replace("-", "_").upper()
            if p.param_type_name == "argument":  # usage: FILE or [FILE], never {file}
                shown = p.metavar if p.required else f"[{p.metavar}]"
                dots = "..." if p.nargs != 1 and not p.metavar.endswith("...") else ""
                p.get_usage_pieces = lambda ctx, shown=shown + dots: [shown]
                p.display_type_rich = lambda ctx: None  # the metavar says it all

    def get_help_option(self, ctx):
        opt = super().get_help_option(ctx)
        if opt is not None:
            install_plain_coercion(opt)
        return opt

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except Exception as exc:  # a usage error: word it without the validator's prefixes
            msg = getattr(exc, "message", None)
            if isinstance(msg, str):
                exc.message = plain_validation_message(msg)
            one_line_usage_error(exc)
            raise


def one_line_usage_error(exc: BaseException) -> None:
    """Show a usage error of the command-line parser (click's UsageError: exit code 2, with
    the context it arose in) as one line on stderr, like every other error of the tool:
    ``error: <what is wrong> (see 'simfluence fit --help')`` instead of the usage line, a hint
    line, a blank line and ``Error: ...``. Other exceptions are left alone."""
    ctx = getattr(exc, "ctx", None)
    if getattr(exc, "exit_code", None) != 2 or not hasattr(exc, "format_message"):
        return
    fix = f" (see '{ctx.command_path} --help')" if ctx is not None else ""

    def show(file=None) -> None:  # as the tool's own errors: red on a terminal, NO_COLOR kept
        msg = exc.format_message()
        line = f"error: {msg[:-1] if msg.endswith('.') else msg}{fix}"
        if file is None or file is sys.stderr:
            stderr_console().print(line, markup=False, style="red", soft_wrap=True)
        else:
            print(line, file=file)

    exc.show = show


_VALIDATOR_PREFIXES = ("Value error, ", "Assertion failed, ", "Input should be ")


def plain_validation_message(msg: str) -> str:
    """'Value error, 'x' is not one of ...' -> ''x' is not one of ...'; 'Input should be
    greater than or equal to 1' -> 'must be greater than or equal to 1'."""
    for prefix in _VALIDATOR_PREFIXES:
        if msg.startswith(prefix):
            rest = msg[len(prefix) :]
            return f"must be {rest}" if prefix == "Input should be " else rest
    return msg


app = typer.Typer(
    name="simfluence",
    cls=_Group,
    help=(
        "Learn training-run simulators (Simfluence) from logged runs, then simulate, evaluate "
        "and design curricula. Data goes to stdout, messages to stderr. Exit codes: 0 ok, "
        "1 data/runtime error, 2 usage error."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_state = {"debug": False, "quiet": False}


def stderr_console() -> Console:
    """Console for messages and progress (stderr); honours NO_COLOR."""
    return Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), highlight=False)


def stdout_console() -> Console:
    """Console for tables on stdout; honours NO_COLOR."""
    return Console(no_color=bool(os.environ.get("NO_COLOR")), highlight=False)


def info(message: str) -> None:
    """A progress/status message on stderr (silenced by --quiet)."""
    if not _state["quiet"]:
        stderr_console().print(message, markup=False, soft_wrap=True)


def wrote(path) -> None:
    """The one line every command prints on stderr after writing its -o file."""
    info(f"wrote {path}")


def open_store(path, create: bool = False):
    """The RunStore at ``path`` (imported here: the CLI loads the library only when a command
    runs); ``create`` makes an empty store where there is none."""
    from simfluence_cli.store.run_store import RunStore

    return RunStore(path, create=create)


def warn(message: str) -> None:
    """A warning on stderr (never silenced)."""
    stderr_console().print(f"warning: {message}", markup=False, style="yellow", soft_wrap=True)


def show_progress() -> bool:
    """Progress bars only when stderr is a terminal and not --quiet."""
    return sys.stderr.isatty() and not _state["quiet"]


def _print_version(value: bool) -> None:
    if value:
        from simfluence_cli._version import __version__

        typer.echo(f"simfluence {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = None,
    debug: Annotated[
        bool,
        typer.Option("--debug", envvar="SIMFLUENCE_DEBUG", help="Show full tracebacks on errors."),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars or status messages on stderr.")
    ] = False,
) -> None:
    _state["debug"] = debug
    _state["quiet"] = quiet


def _exit_if_threads_busy(code: int) -> None:
    """Exit now when worker threads are still running after an interrupt: the store is already
    as before (every with-block has unwound: locks released, temp files removed) and their
    results are dropped, but interpreter shutdown would join them (minutes for a fold fit)."""
    import threading

    main = threading.main_thread()
    if any(t is not main and t.is_alive() and not t.daemon for t in threading.enumerate()):
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def command(name: str | None = None, **kwargs) -> Callable:
    """Register a CLI command whose SimfluenceErrors become one stderr line and an exit code."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kw):
            try:
                with warnings.catch_warnings():
                    shown = warnings.showwarning
                    warnings.simplefilter("always", SimfluenceWarning)
                    said: set[str] = set()  # one line per distinct warning and command

                    def show(message, category, *a, **k):
                        if not issubclass(category, SimfluenceWarning):
                            return shown(message, category, *a, **k)
                        if str(message) not in said:
                            said.add(str(message))
                            warn(str(message))

                    warnings.showwarning = show
                    check_output_paths(kw)
                    check_single_stdin(kw)
                    _state["invocation"] = (name or fn.__name__, dict(kw))
                    try:
                        return fn(*args, **kw)
                    finally:
                        _state.pop("invocation", None)
            except SimfluenceError as exc:
                if _state["debug"]:
                    raise
                stderr_console().print(f"error: {exc}", markup=False, style="red", soft_wrap=True)
                raise typer.Exit(exc.exit_code) from None
            except KeyboardInterrupt:
                stderr_console().print("interrupted", markup=False)
                _exit_if_threads_busy(130)
                raise typer.Exit(130) from None
            except Exception as exc:  # environment problems and bugs: one line, never a traceback
                if _state["debug"] or type(exc).__module__.startswith(("typer", "click")):
                    raise  # typer.Exit and usage errors are the framework's own
                stderr_console().print(
                    f"error: {describe_exception(exc)}", markup=False, style="red", soft_wrap=True
                )
                raise typer.Exit(1) from None

        return app.command(name, cls=_Command, **kwargs)(wrapper)

    return decorate


def _created_at() -> str:
    """The time an output is written (UTC, ISO 8601), or $SOURCE_DATE_EPOCH (the reproducible-
    builds convention: Unix seconds) when set, so the output's bytes do not depend on when."""
    from datetime import UTC, datetime

    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    try:
        when = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
    except (ValueError, OverflowError, OSError):
        raise UsageError(
            f"SOURCE_DATE_EPOCH must be Unix seconds (an integer), got {epoch!r}"
        ) from None
    return when.isoformat(timespec="seconds")


def provenance() -> dict:
    """What produced an output, to save beside it: the command and every option's value
    (defaults included), the store, each named model's kind, method, data hash, fit time and
    parameter generation, and the versions of simfluence, Python and the numeric libraries."""
    import json

    from simfluence_cli._version import versions

    cmd, kw = _state.get("invocation") or ("", {})
    options = {
        k: (v if v is None or isinstance(v, bool | int | float | str) else str(v))
        if not isinstance(v, list | tuple)
        else [str(x) for x in v]
        for k, v in kw.items()
    }
    out = {
        "command": f"simfluence {cmd}".strip(),
        "options": options,
        "created_at": _created_at(),
        "versions": versions(),
    }
    names = kw.get("model") or kw.get("models") or []
    names = [names] if isinstance(names, str) else list(names)
    store = kw.get("store")
    models = {}
    for n in names if store is not None else []:
        try:
            man = json.loads((Path(store) / "models" / str(n) / "model.json").read_text())
        except (OSError, ValueError):
            continue
        cfg = man.get("config") or {}
        models[str(n)] = {
            "kind": cfg.get("kind"),
            "method": cfg.get("method"),
            "data_hash": cfg.get("data_hash"),
            "fitted_at": man.get("fitted_at"),
            "parameters": (man.get("files") or {}).get("parameters"),
        }
    if models:
        out["models"] = models
    return out


# parameters that name a file (or, for plan, a directory) the command writes; '-' = stdout
_OUTPUT_PARAMS = {"output": "--output", "report": "--report", "save_edited": "--save-edited"}


def check_output_paths(kw: dict) -> None:
    """Refuse an output path that cannot be written before any work is done.

    The nearest existing ancestor of the path's directory must be a directory in which a file
    can be created (a probe file is created and removed at once): a path under a regular file,
    under /proc or on a read-only file system fails here in one line naming the path given.
    """
    import tempfile

    for key, flag in _OUTPUT_PARAMS.items():
        value = kw.get(key)
        if value is None or str(value) in ("-", ""):
            continue
        parent = Path(value).parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise SimfluenceError(
                f"cannot write {flag} {value}: {parent} is a file, not a directory; "
                "choose another path"
            )
        try:
            fd, probe = tempfile.mkstemp(prefix=".simfluence-probe.", dir=parent)
        except OSError as exc:
            raise SimfluenceError(
                f"cannot write {flag} {value}: cannot create files in {parent} "
                f"({exc.strerror or exc}); choose another path"
            ) from None
        os.close(fd)
        os.unlink(probe)


# parameters that may read stdin ('-' or '@-'); one command invocation has one stdin
_INPUT_PARAMS = (
    "curriculum",
    "base",
    "edited",
    "init_loss",
    "tests",
    "test",
    "drop",
    "only",
    "repeat",
    "order",
    "pool",
    "group",
)


def _reads_stdin(value) -> bool:
    if isinstance(value, list | tuple):
        return any(_reads_stdin(v) for v in value)
    return isinstance(value, str) and (value in ("-", "@-") or value.endswith("=@-"))


def check_single_stdin(kw: dict) -> None:
    """Refuse two inputs that both read stdin (the first would take it all, the second would
    see nothing and report a confusing empty input)."""
    readers = [k for k in _INPUT_PARAMS if _reads_stdin(kw.get(k))]
    if len(readers) > 1:
        names = [k.upper() if k == "curriculum" else "--" + k.replace("_", "-") for k in readers]
        raise UsageError(
            f"{' and '.join(names)} both read stdin ('-' / '@-'); only one input can come "
            "from stdin: save the other to a file"
        )


def describe_exception(exc: BaseException) -> str:
    """One line for an exception that is not a SimfluenceError.

    OSErrors (permissions, read-only file systems, a --store under a regular file or /proc,
    a full disk) name the path and the reason; anything else is an internal error.
    """
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        what = exc.strerror or str(exc)
        hint = ""
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = " (no write permission or a read-only file system; reads still work)"
        elif exc.errno in (errno.ENOTDIR, errno.ENOENT):
            hint = " (a parent of this path is missing or is a file; check --store / -o)"
        elif exc.errno == errno.ENOSPC:
            hint = " (free some space; nothing was committed)"
        return f"{where}{what}{hint}"
    if isinstance(exc, UnicodeError):
        return f"input is not UTF-8 text ({exc})"
    first = str(exc).splitlines()[0] if str(exc) else ""
    return (
        f"internal error: {type(exc).__name__}: {first} (please report it; rerun with --debug "
        "for the traceback)"
    )


# Shared option types -------------------------------------------------------------------------

StoreOpt = Annotated[
    Path,
    typer.Option(
        "--store",
        "-s",
        envvar="SIMFLUENCE_STORE",
        help="Run store directory (env SIMFLUENCE_STORE).",
        show_default=True,
    ),
]
DEFAULT_STORE = Path("simfluence-store")

RunsOpt = Annotated[
    str,
    typer.Option(
        "--runs",
        "-r",
        help="Run selector: 'all', tag names, run-id globs, comma-separated; "
        "'-' before a term excludes it, e.g. 'fit,-run-07'. See docs/ingest.md.",
    ),
]


class Unseen(str, Enum):
    """What to do with training examples a model has no fitted parameters for."""

    error = "error"
    prior = "prior"
    skip = "skip"


UnseenOpt = Annotated[
    Unseen,
    typer.Option(
        "--unseen",
        help="Training examples the model has no fitted parameters for (absent from its "
        "fitting runs): error (stop); prior = they act as the shrink target (no "
        "change); skip = drop them from their batch.",
    ),
]
