"""value.npy, value.csv and value.parquet: numpy arrays and pandas tables.

  * value.npy (numpy.ndarray): `numpy.save` format, readable by `numpy.load(path)`. Object-dtype arrays embed a
    pickle, as numpy writes them, and need `numpy.load(path, allow_pickle=True)`.
  * value.csv: `DataFrame.to_csv`. A frame with the default index (an unnamed RangeIndex 0, 1, 2, ...) is written
    without it, so `pandas.read_csv(path)` and DuckDB read the frame back as it is; any other index is written as
    the first column(s), headed by its name if it has one, and `pandas.read_csv(path, index_col=0)` gives it back
    (one-level index and columns; dtypes are re-inferred). A Series is written as a one-column frame headed by its
    name (`0` when unnamed), by the same rule: `pandas.read_csv(path).squeeze("columns")` (or with `index_col=0`
    for a non-default index) gives it back.
  * value.parquet: `DataFrame.to_parquet` with pyarrow, index included, so `pandas.read_parquet(path)` gives the
    frame back with dtypes and index. Parquet needs string column names: other names are written as `str(name)`.
    A Series is written as `series.to_frame()`.

numpy, pandas and pyarrow are imported only inside the renderers.
"""
from __future__ import annotations

import io
from typing import Any

from .rule import ExportRule, WrongKind

_PANDAS_TABLE_TYPES = frozenset(
    {"pandas.DataFrame", "pandas.core.frame.DataFrame", "pandas.Series", "pandas.core.series.Series"}
)


def _render_npy(value: Any) -> bytes:
    import numpy

    if not isinstance(value, numpy.ndarray):
        raise WrongKind("a numpy array")
    buffer = io.BytesIO()
    numpy.save(buffer, value)
    return buffer.getvalue()


def _as_frame(value: Any) -> Any:
    import pandas

    if isinstance(value, pandas.Series):
        return value.to_frame()
    if isinstance(value, pandas.DataFrame):
        return value
    raise WrongKind("a pandas DataFrame or Series")


def _render_csv(value: Any) -> bytes:
    frame = _as_frame(value)
    return frame.to_csv(index=not _is_default_index(frame.index)).encode("utf-8")


def _is_default_index(index: Any) -> bool:
    """A RangeIndex 0, 1, 2, ... with no name: what `read_csv` makes again by itself."""
    import pandas

    return (isinstance(index, pandas.RangeIndex) and index.name is None and index.start == 0
            and index.step == 1)


def _render_parquet(value: Any) -> bytes:
    frame = _as_frame(value)
    if not all(isinstance(column, str) for column in frame.columns):
        frame = frame.rename(columns=str)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, engine="pyarrow", index=None)
    return buffer.getvalue()


NPY = ExportRule("value.npy", lambda qualname: qualname == "numpy.ndarray", _render_npy, needs=("numpy",))
CSV = ExportRule("value.csv", _PANDAS_TABLE_TYPES.__contains__, _render_csv, needs=("pandas",))
PARQUET = ExportRule("value.parquet", _PANDAS_TABLE_TYPES.__contains__, _render_parquet, needs=("pandas", "pyarrow"))
