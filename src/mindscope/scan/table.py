"""The per-image table: one row per image and method, in Parquet.

Why Parquet rather than SQLite: every shard writes its own small file with no shared
database to lock, so N processes on N machines (a SLURM array writing to one network
folder, where SQLite's locking is unreliable) never wait on each other; the merged table
is those files streamed into one; it is columnar and compressed (a million rows of
floats stay tens of MB), and pandas, pyarrow, Ray Data, DuckDB and Spark open it as it is.
The cost is a dependency: pyarrow, in the `mindscope[scan]` extra.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mindscope.scan.files import write_atomically

# column -> arrow type name; nullable where a method does not define the value (gradient: no baseline)
COLUMNS: dict[str, str] = {
    "index": "int64",  # position in the data set's test split
    "label": "int64",
    "target": "int64",  # the class attributed
    "prediction": "int64",
    "probability": "float64",  # softmax probability of the prediction
    "output": "float64",  # F(x) for the target
    "baseline_output": "float64",  # F(x')
    "delta": "float64",  # F(x) - F(x'): what the map explains
    "completeness_error": "float64",  # |sum(map) - delta|
    "relative_completeness_error": "float64",
    "steps": "int64",  # gradient evaluations
    "map_error": "float64",  # estimated relative L2 error of the map (tolerance mode)
    "converged": "bool_",
    "ill_conditioned": "bool_",  # nothing to explain: the baseline already scores about F(x)
    "seconds": "float64",  # the batch's wall time, shared out by steps
}


def arrow() -> Any:
    """pyarrow, or one line that says how to get it."""
    try:
        import pyarrow
        import pyarrow.compute  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ValueError(
            "a scan writes its per-image table as Parquet, which needs pyarrow; "
            "install it with pip install 'mindscope[scan]'"
        ) from None
    return pyarrow


def schema() -> Any:
    pa = arrow()
    fields = [pa.field("method", pa.string()), pa.field("shard", pa.int64())]
    return pa.schema(fields + [pa.field(name, getattr(pa, kind)()) for name, kind in COLUMNS.items()])


def to_table(rows: dict[str, dict[str, np.ndarray | None]], shard: int) -> Any:
    """One arrow table from {method: {column: values or None}}, methods one after another."""
    pa = arrow()
    tables = []
    for method, columns in rows.items():
        n = len(columns["index"])
        arrays = {"method": pa.array([method] * n, pa.string()), "shard": pa.array(np.full(n, shard, np.int64))}
        for name, kind in COLUMNS.items():
            values = columns[name]
            arrays[name] = pa.nulls(n, getattr(pa, kind)()) if values is None else pa.array(values, getattr(pa, kind)())
        tables.append(pa.table(arrays, schema=schema()))
    return pa.concat_tables(tables)


def table_bytes(rows: dict[str, dict[str, np.ndarray | None]], shard: int) -> bytes:
    pa = arrow()
    sink = pa.BufferOutputStream()
    pa.parquet.write_table(to_table(rows, shard), sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def read_table(path: Path) -> Any:
    return arrow().parquet.read_table(path, schema=schema())


def write_merged(path: Path, parts: Iterable[Path]) -> int:
    """Stream the shard tables into one Parquet file (one row group each); return its rows."""
    pa = arrow()
    rows = 0

    def write(f) -> None:
        nonlocal rows
        with pa.parquet.ParquetWriter(f, schema(), compression="zstd") as writer:
            for part in parts:
                table = read_table(part)
                writer.write_table(table)
                rows += table.num_rows

    write_atomically(path, write)
    return rows
