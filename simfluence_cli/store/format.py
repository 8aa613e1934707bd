"""The store's on-disk format in one place: versions, file names, column meanings, schemas.

Readers of the store (pandas, polars, duckdb) can rely on what is written here; every module of
the store imports its constants from this leaf module.
"""

from __future__ import annotations

import re

import pyarrow as pa

from simfluence_cli._hashing import sha256_hex

STORE_FORMAT = 1


MANIFEST = "manifest.json"


RUNS_TABLE = "runs.parquet"


PARTS = ("curriculum", "losses")


CURRICULUM_COLUMNS = {
    "run": "run id",
    "step": "training step t (1..T); the batch trained on at step t, in batch order",
    "example_id": "training example in the batch of step t",
    "lr": "optional (float64): learning rate of step t's update, the same on every row of the "
    "step; absent column = not logged",
}


LOSS_COLUMNS = {
    "run": "run id",
    "step": "step t after whose update the loss was measured (0 = initial checkpoint)",
    "test_id": "test example",
    "loss": "loss of test_id after step t (float64); absent row = not evaluated at that step",
}


RUNS_COLUMNS = {
    "run": "run id",
    "tags": "tags given at ingest (selectors match them)",
    "steps": "number of training steps T",
    "batch_size_min": "smallest batch",
    "batch_size_max": "largest batch",
    "n_examples": "distinct training examples in the curriculum",
    "n_tests": "distinct test examples with losses",
    "loss_steps": "number of steps with logged losses (including step 0)",
    "curriculum_rows": "rows in the run's curriculum file",
    "loss_rows": "rows in its losses file",
    "source_format": "jsonl | table | gptdynamics | python",
    "source": "input path(s) the run was read from",
    "source_sha256": "sha256 of the input file(s), comma-separated",
    "content_hash": "sha256 of the canonical run content (same content = same hash, any format)",
    "ingested_at": "UTC time of the ingest (ISO 8601)",
    "curriculum_file": "curriculum file, relative to the store",
    "losses_file": "losses file, relative to the store",
}

# the runs table's types: these counts are int64, "tags" a list of strings, the rest strings
RUNS_INT_COLUMNS = (
    "steps",
    "batch_size_min",
    "batch_size_max",
    "n_examples",
    "n_tests",
    "loss_steps",
    "curriculum_rows",
    "loss_rows",
)
RUNS_SCHEMA = pa.schema(
    [
        (
            k,
            pa.list_(pa.string())
            if k == "tags"
            else pa.int64()
            if k in RUNS_INT_COLUMNS
            else pa.string(),
        )
        for k in RUNS_COLUMNS
    ]
)


_DICT = pa.dictionary(pa.int32(), pa.string())


CURRICULUM_SCHEMA = pa.schema([("run", _DICT), ("step", pa.int64()), ("example_id", _DICT)])
# runs that log a learning rate per step carry it as a fourth column (older stores never do)
CURRICULUM_LR_SCHEMA = CURRICULUM_SCHEMA.append(pa.field("lr", pa.float64()))


LOSS_SCHEMA = pa.schema(
    [("run", _DICT), ("step", pa.int64()), ("test_id", _DICT), ("loss", pa.float64())]
)


# partition file names this store writes: <slug>-<hash10>.g<N>.parquet (+ ".<name>.pending")
_PART_FILE = re.compile(r"^\.?[A-Za-z0-9._-]*-[0-9a-f]{10}\.g\d+\.parquet(\.pending)?$")


def run_key(run_id: str) -> str:
    """File-system-safe, collision-free file stem for a run id."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("._-")[:48] or "run"
    return f"{slug}-{sha256_hex(run_id)[:10]}"


MODEL_FORMAT = 1


PARAM_COLUMNS = {
    "test_id": "test example the parameter belongs to",
    "example_id": "training example",
    "A": "multiplier: alpha(c_t) = sum of A over the batch; L_t = alpha L_{t-1} + beta "
    "(null for additive models: alpha = 1)",
    "B": "offset: beta(c_t) = sum of B over the batch; negative B lowers the test loss",
}


#: the same columns of an optimizer-aware model (docs/optimizer-aware.md), whose A is not a
#: multiplier summed over the batch but a deviation from "no change" (0) in the increment
PARAM_COLUMNS_OPTIMIZER_AWARE = {
    **PARAM_COLUMNS,
    "A": "a_i: coefficient on the previous transformed loss y_{t-1} in the increment "
    "y_t - y_{t-1} = w_t sum over the batch of (a_i y_{t-1} + B_i) + rho (y_{t-1} - y_{t-2}) "
    "+ drift, w_t = (lr_t / lr_ref) (b_ref / |batch|); 0 = no change (docs/optimizer-aware.md)",
    "B": "B_i: offset in that increment, in units of the transformed loss y (model.json: "
    "optimizer_aware.chosen.transform); negative B lowers the test loss",
}


def param_columns(method: str) -> dict[str, str]:
    """The meanings of a parameter file's columns for a model of ``method``."""
    return PARAM_COLUMNS_OPTIMIZER_AWARE if method == "optimizer-aware" else PARAM_COLUMNS


MODEL_FILE_PREFIXES = ("parameters-", "tests-", "examples-")


CALIBRATION_FORMAT = 1
CALIBRATION_MANIFEST = "calibration.json"  # models/<name>/calibration.json: the commit point
CALIBRATION_DIR_PREFIX = "calibration-"  # models/<name>/calibration-<gen>/: one generation
CALIBRATION_ARRAYS = "residuals.npz"  # in the generation dir: out-of-fold residual arrays
CALIBRATION_FOLD_PREFIX = "fold-"  # in the generation dir: fold-<k>/ = fold model k's files
CALIBRATION_ARRAY_MEANINGS = {
    "obs": "(runs, steps+1, tests) observed losses of the fitting runs on the step grid (NaN = "
    "not logged)",
    "pred": "(runs, steps+1, tests) out-of-fold predictions (by the model fitted without the "
    "run's fold) from the run's own step-0 losses",
    "obs_final": "(runs, tests) observed loss at each run's last logged step",
    "pred_final": "(runs, tests) out-of-fold prediction at that step",
    "fold_of": "(runs,) fold index of each fitting run (run order: calibration.json run_ids)",
    "novelty": "(runs, 2) curriculum features of the fitting runs: regularity, imbalance "
    "(simfluence_cli/analysis/novelty.py)",
}
