"""Saved interval calibrations beside their model: ``models/<name>/calibration.json``.

A calibration (:mod:`simfluence_cli.analysis.intervals`) is K fold models plus out-of-fold
residual arrays of the model's fitting runs. It is saved as one generation directory
``calibration-<gen>/`` (``residuals.npz`` and ``fold-<k>/``, each fold model in the saved-model
layout: parameters, tests, examples, ``model.json``) and committed by writing
``calibration.json`` last (atomically). After the commit every other ``calibration-*``
directory is removed, so one generation remains; a crash in between leaves strays that
``simfluence verify`` reports and ``verify --repair`` removes (:func:`stray_calibrations`).

A calibration is used only when its **key** matches: the model's generation (its parameters
file name, new at every fit) and fit time, the content hash of its fitting runs as they are in
the store now, the number of folds and the seed. Refitting a model drops its calibration
(:func:`drop_calibration`, called by ``save_model``); re-ingesting a fitting run with other
content makes it stale.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from simfluence_cli._atomic import write_atomic, write_bytes_atomic
from simfluence_cli.errors import ConflictError, SimfluenceError
from simfluence_cli.store import _staging
from simfluence_cli.store.format import (
    CALIBRATION_ARRAY_MEANINGS,
    CALIBRATION_ARRAYS,
    CALIBRATION_DIR_PREFIX,
    CALIBRATION_FOLD_PREFIX,
    CALIBRATION_FORMAT,
    CALIBRATION_MANIFEST,
    MODEL_FORMAT,
)
from simfluence_cli.store.saved_models import (
    drop_calibration,
    load_model_files,
    model_dir,
    read_manifest,
    remove_tree,
    stray_calibrations,
    write_model_files,
)

__all__ = [
    "DEFAULT_FOLDS",
    "DEFAULT_SEED",
    "calibration_key",
    "calibration_status",
    "drop_calibration",
    "load_calibration",
    "save_calibration",
    "stray_calibrations",
]

DEFAULT_FOLDS = 8  # folds and seed of the calibration `--interval` uses
DEFAULT_SEED = 0


def calibration_key(store, name: str, folds: int, seed: int, manifest: dict | None = None) -> dict:
    """What a saved calibration of model ``name`` must match to be used (see module doc).
    Raises SelectionError when the fitting runs are no longer in the store."""
    man = manifest if manifest is not None else read_manifest(store, name)
    runs = list((man.get("config") or {}).get("runs") or [])
    return {
        "model": name,
        "model_generation": (man.get("files") or {}).get("parameters"),
        "fitted_at": man.get("fitted_at"),
        "runs_hash": store.data_hash(runs) if runs else None,
        "folds": int(folds),
        "seed": int(seed),
    }


def _read(d: Path) -> dict | None:
    try:
        out = json.loads((d / CALIBRATION_MANIFEST).read_text(encoding="utf-8"))
        return out if isinstance(out, dict) else None
    except (OSError, ValueError):
        return None


def _why_stale(saved: dict, key: dict) -> str:
    old = saved.get("key") or {}
    if (
        old.get("model_generation") != key["model_generation"]
        or old.get("fitted_at") != key["fitted_at"]
    ):
        return "the model was refitted"
    if old.get("runs_hash") != key["runs_hash"]:
        return "the fitting runs' data changed"
    if (old.get("folds"), old.get("seed")) != (key["folds"], key["seed"]):
        return f"it has folds={old.get('folds')}, seed={old.get('seed')}"
    return "its key differs"


def calibration_status(store, name: str, folds: int, seed: int) -> tuple[str, str]:
    """('calibrated' | 'stale' | 'no', reason) for model ``name``."""
    d = model_dir(store, name)
    saved = _read(d) if (d / CALIBRATION_MANIFEST).exists() else None
    if saved is None:
        return (
            ("stale", "calibration.json unreadable")
            if (d / CALIBRATION_MANIFEST).exists()
            else (
                "no",
                "",
            )
        )
    try:
        key = calibration_key(store, name, folds, seed)
    except SimfluenceError as exc:
        return "stale", str(exc)
    if saved.get("key") != key:
        return "stale", _why_stale(saved, key)
    return "calibrated", ""


def save_calibration(
    store, name: str, key: dict, fold_models: list, arrays: dict, meta: dict
) -> dict:
    """Write a calibration of model ``name``: its files into a staging directory without the
    lock, then, under the store's write lock, the commit. ``key``: from
    :func:`calibration_key` when the calibration started; if the model or its runs changed
    since, nothing is written (ConflictError). ``arrays``: the float arrays of
    ``CALIBRATION_ARRAY_MEANINGS``; ``meta``: JSON-safe extras (run_ids, test_ids, seconds)."""
    d = model_dir(store, name)
    gen = f"{CALIBRATION_DIR_PREFIX}{int(time.time())}-{secrets.token_hex(3)}"
    staging = _staging.new_entry(store.path, "calibrate")  # a read-only store fails here
    try:
        # the fold models and arrays are written without the lock, into this process's staging
        g = staging / gen
        g.mkdir()
        write_atomic(
            g / CALIBRATION_ARRAYS,
            lambda fh: np.savez(
                fh, **{k: np.asarray(arrays[k]) for k in CALIBRATION_ARRAY_MEANINGS}
            ),
        )
        folds = []
        for k, fm in enumerate(fold_models):
            fd = g / f"{CALIBRATION_FOLD_PREFIX}{k}"
            files, oa = write_model_files(fd, fm, "fold")
            fman = {
                "format": MODEL_FORMAT,
                "name": f"{name}/{gen}/{fd.name}",
                "config": {**fm.config.to_json(), "runs": list(getattr(fm, "run_ids_", []))},
                "l2": fm.l2_,
                "batch_size": fm.batch_size_,
                "files": files,
                **({"optimizer_aware": oa} if oa is not None else {}),
            }
            write_bytes_atomic(fd / "model.json", (json.dumps(fman, indent=2) + "\n").encode())
            folds.append(fd.name)
        manifest = {
            "format": CALIBRATION_FORMAT,
            "key": key,
            "generation": gen,
            "folds": folds,
            "arrays": {CALIBRATION_ARRAYS: CALIBRATION_ARRAY_MEANINGS},
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **meta,
        }
        with store.write_lock():  # the commit: check the key, move the generation in, commit
            now = calibration_key(store, name, key["folds"], key["seed"])
            if now != key:
                raise ConflictError(
                    f"model {name!r} or its fitting runs changed while it was being calibrated "
                    f"({_why_stale({'key': key}, now)}); the calibration was not saved and the "
                    f"store is unchanged: rerun `simfluence calibrate --model {name}`"
                )
            os.replace(g, d / gen)
            write_bytes_atomic(
                d / CALIBRATION_MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode()
            )
            for p in stray_calibrations(d):
                remove_tree(p)
    finally:
        _staging.remove(staging)
    return manifest


def load_calibration(store, name: str, key: dict) -> tuple[dict | None, str]:
    """(payload, reason): payload = {manifest, arrays, fold_models} when a saved calibration of
    ``name`` matches ``key``, else None with the reason ('' when there is none)."""
    d = model_dir(store, name)
    if not (d / CALIBRATION_MANIFEST).exists():
        return None, ""
    saved = _read(d)
    if saved is None or saved.get("format", 0) > CALIBRATION_FORMAT:
        return None, "the saved calibration is unreadable or newer than this simfluence"
    if saved.get("key") != key:
        return None, f"the saved calibration is stale ({_why_stale(saved, key)})"
    g = d / str(saved.get("generation"))
    try:
        with np.load(g / CALIBRATION_ARRAYS, allow_pickle=False) as z:
            arrays = {k: z[k] for k in CALIBRATION_ARRAY_MEANINGS}
        fold_models = []
        for f in saved["folds"]:
            fman = json.loads((g / f / "model.json").read_text(encoding="utf-8"))
            fold_models.append(load_model_files(g / f, fman, f"{name}/{f}"))
    except Exception as exc:  # any damage: recompute rather than fail
        return None, f"the saved calibration is damaged ({type(exc).__name__}: {str(exc)[:120]})"
    return {"manifest": saved, "arrays": arrays, "fold_models": fold_models}, ""
