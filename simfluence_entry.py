"""Console-script entry point of ``simfluence``.

A top-level module that imports only the standard library, so that Ctrl-C at any moment exits
130 with one line, not a traceback: while the package (numpy, pyarrow, typer) is imported, a
SIGINT is deferred (an interrupt inside a C extension's import would surface as an unrelated
ImportError) and honoured as soon as the import is done; afterwards it is a KeyboardInterrupt
that the commands turn into "interrupted" and exit 130.
"""

import signal
import sys


def _interrupted() -> None:
    try:
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
    except Exception:
        pass
    raise SystemExit(130)


def main() -> None:
    pending: list[int] = []
    try:
        signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    except ValueError:  # not the main thread: nothing to defer
        pass
    try:
        from simfluence_cli.cli import main as run
    except BaseException:
        if pending:
            _interrupted()
        raise
    finally:
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        except ValueError:
            pass
    if pending:
        _interrupted()
    try:
        run()
    except KeyboardInterrupt:
        _interrupted()


if __name__ == "__main__":
    main()
