"""Console-script entry point of ``simfluence``.

A top-level module that imports nothing heavy, so that Ctrl-C at any moment, even while the
package (numpy, pyarrow, typer) is still being imported, exits 130 with one line, not a
traceback.
"""

import sys


def main() -> None:
    try:
        from simfluence_cli.cli import main as run

        run()
    except KeyboardInterrupt:
        try:
            sys.stderr.write("interrupted\n")
            sys.stderr.flush()
        except Exception:
            pass
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
