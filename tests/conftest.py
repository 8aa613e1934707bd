"""Shared pytest configuration.

Property tests are derandomized so the suite is deterministic (the same examples on every run,
in CI too); set ``SIMFLUENCE_HYPOTHESIS=explore`` to draw fresh random examples locally.
Longer fuzzing campaigns live in ``bench/fuzz_campaign.py``.
"""

import os

import pytest
from hypothesis import settings

os.environ.setdefault("NO_COLOR", "1")
os.environ.pop("SIMFLUENCE_STORE", None)

settings.register_profile("deterministic", derandomize=True, deadline=None, database=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(
    "explore" if os.environ.get("SIMFLUENCE_HYPOTHESIS") == "explore" else "deterministic"
)


#: test modules that import torch / transformers when imported (seconds): every test is slow
TORCH_MODULES = {"test_integrations_hf.py", "test_integrations_torch.py", "test_lm_family.py"}


def pytest_ignore_collect(collection_path, config):
    """The quick loop (``-m "not slow"``) does not even import ``TORCH_MODULES``: all their
    tests are marked slow, and collecting them would import torch and transformers."""
    if collection_path.name in TORCH_MODULES and "not slow" in (config.option.markexpr or ""):
        return True
    return None


#: a ``sweep`` test's cases that the quick loop (``-m "not slow"``) runs: every SWEEP_STRIDE-th
SWEEP_STRIDE = 8


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.sweep``: a parametrized test over many similar cases (every command,
    every bad input). ``make test`` runs every case; the quick loop runs every
    ``SWEEP_STRIDE``-th case of each (the first included): the others are marked slow."""
    seen: dict = {}
    for item in items:
        if item.get_closest_marker("sweep") is None or not hasattr(item, "callspec"):
            continue
        key = (str(item.path), item.originalname)
        i = seen[key] = seen.get(key, -1) + 1
        if i % SWEEP_STRIDE:
            item.add_marker(pytest.mark.slow)
