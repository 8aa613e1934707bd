"""bench/run_all.py knows every benchmark script: each runs in `make bench` or is listed as
manual with the reason, so a new bench cannot be silently left out."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run_all():
    spec = importlib.util.spec_from_file_location("run_all", BENCH / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_bench_script_is_in_run_all():
    mod = _run_all()
    names = {p.stem.removeprefix("bench_") for p in BENCH.glob("bench_*.py")}
    names |= {p.stem.removesuffix("_campaign") for p in BENCH.glob("*_campaign.py")}
    assert names == set(mod.ORDER) | set(mod.MANUAL)
    assert not set(mod.ORDER) & set(mod.MANUAL)
    for name in mod.ORDER:
        assert mod.script(name).is_file()


def test_a_manual_bench_says_what_it_needs():
    with pytest.raises(SystemExit, match="--baseline"):
        _run_all().main(["fitspeed"])
