"""Feature vectors in the object store: Parquet parts of (user_id, vector float16[dim])."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from userlens.jobs.engine import TransientJobError
from userlens.storage.objectstore import ObjectStore, ObjectStoreError


def write_part(store: ObjectStore, bucket: str, key: str, user_ids: list[str], vectors: np.ndarray) -> int:
    """Writes one part atomically; returns its size in bytes."""
    n, dim = vectors.shape
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float16).reshape(-1))
    table = pa.table({"user_id": pa.array(user_ids, pa.string()), "vector": pa.FixedSizeListArray.from_arrays(flat, dim)})
    with store.open_write(bucket, key) as f:
        # Vectors are near-random bits: compressing them costs time and saves nothing.
        pq.write_table(table, f, compression={"user_id": "zstd", "vector": "none"}, use_dictionary=False, row_group_size=65536)
    return store.size(bucket, key)


def part_keys(store: ObjectStore, bucket: str, prefix: str) -> list[str]:
    return [o.key for o in store.list(bucket, prefix) if o.key.endswith(".parquet")]


def iter_vectors(store: ObjectStore, bucket: str, prefix: str, columns: tuple[str, ...] = ("user_id", "vector")) -> Iterator[tuple[list[str], np.ndarray | None]]:
    """(user_ids, float32 matrix) per row group of every part, in order; memory bounded by a row group.

    A store failure surfaces as a retryable OBS_DOWNLOAD_FAILED, wherever the caller is."""
    try:
        yield from _iter_vectors(store, bucket, prefix, columns)
    except (ObjectStoreError, OSError) as exc:
        raise TransientJobError("OBS_DOWNLOAD_FAILED", f"reading vectors {prefix}: {exc}") from exc


def _iter_vectors(store: ObjectStore, bucket: str, prefix: str, columns: tuple[str, ...]):
    for key in part_keys(store, bucket, prefix):
        with store.open_read(bucket, key) as f:
            pf = pq.ParquetFile(f)
            for rg in range(pf.num_row_groups):
                t = pf.read_row_group(rg, columns=list(columns))
                ids = t.column("user_id").to_pylist()
                mat = None
                if "vector" in columns:
                    col = t.column("vector").combine_chunks()
                    dim = col.type.list_size
                    mat = col.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
                yield ids, mat
