"""Zero-copy numpy views of Arrow arrays; reading one Parquet file."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


# Arrow arrays built from buffers: pa.array() imports pandas when it is installed (~0.4 s CPU)
def arrow_numbers(a: np.ndarray) -> pa.Array:
    """A null-free numeric Arrow array of a 1-D numpy array (``pa.array(a)``, without pandas)."""
    a = np.ascontiguousarray(a)
    return pa.Array.from_buffers(pa.from_numpy_dtype(a.dtype), len(a), [None, pa.py_buffer(a)])


def arrow_strings(values) -> pa.Array:
    """A string Arrow array of ``values`` (``pa.array(values, pa.string())``, without pandas)."""
    enc = [str(v).encode("utf-8") for v in values]
    off = np.zeros(len(enc) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in enc], out=off[1:])
    data = pa.py_buffer(b"".join(enc))
    if off[-1] < 2**31:  # int32 offsets: a plain string array (a cast imports pyarrow.compute)
        return pa.Array.from_buffers(
            pa.string(), len(enc), [None, pa.py_buffer(off.astype(np.int32)), data]
        )
    return pa.Array.from_buffers(pa.large_string(), len(enc), [None, pa.py_buffer(off), data]).cast(
        pa.string()
    )


def read_parquet(path, columns=None) -> pa.Table:
    """One Parquet file as a table (``pq.read_table(path, columns=columns)`` for a file path).

    ``pq.read_table`` goes through ``pyarrow.dataset`` (importing it costs ~0.3 s CPU);
    ``ParquetFile.read`` gives the same table without it.
    """
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as pf:
        return pf.read(columns=columns)


def np_view(arr) -> np.ndarray:
    """A numpy view of a null-free numeric Arrow array or chunked array.

    (pyarrow's ``to_numpy`` imports pandas when it is installed, which costs ~0.5 s.)
    """
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        parts = [np_view(c) for c in arr.chunks]
        if len(parts) == 1:
            return parts[0]
        dt = np.dtype(arr.type.to_pandas_dtype()) if not pa.types.is_boolean(arr.type) else bool
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dt)
    t = arr.type
    if (
        arr.null_count
        or not (pa.types.is_integer(t) or pa.types.is_floating(t))
        or pa.types.is_float16(t)
    ):
        return arr.to_numpy(zero_copy_only=False)
    dt = np.dtype(t.to_pandas_dtype())
    if len(arr) == 0:  # an empty array may have no data buffer
        return np.zeros(0, dtype=dt)
    return np.frombuffer(
        arr.buffers()[1], dtype=dt, count=len(arr), offset=arr.offset * dt.itemsize
    )


def _indices(col) -> np.ndarray:
    """The int codes of a null-free DictionaryArray, without a copy."""
    return np_view(col.indices)


def _dict_column(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(dictionary values as object array, int64 codes) of a string column, vectorised."""
    if not pa.types.is_dictionary(col.type):
        col = col.cast(pa.string()).dictionary_encode()
    col = col.unify_dictionaries()
    if col.num_chunks == 0:
        return np.asarray([], dtype=object), np.zeros(0, dtype=np.int64)
    values = np.asarray(col.chunk(0).dictionary.to_pylist(), dtype=object)
    codes = np.concatenate([_indices(c) for c in col.chunks])
    return values, codes.astype(np.int64, copy=False)
