"""Machine facts the benchmark scripts record beside their figures."""

from __future__ import annotations

import platform


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what ``platform`` knows, else '?')."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def run_facts(load_key: str = "load", **extra) -> dict:
    """The facts a benchmark prints first (one JSON line): its command line, CPU model, CPU
    count, Python version and the load average now (under ``load_key``), then ``extra``."""
    import os
    import sys
    from pathlib import Path

    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "python": sys.version.split()[0],
        load_key: [round(x, 2) for x in os.getloadavg()],
        **extra,
    }
