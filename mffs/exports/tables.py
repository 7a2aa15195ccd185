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
from typing import Any, List

from .rule import Example, ExportRule, WrongKind

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


def _read_npy(data: bytes) -> Any:
    import numpy

    return numpy.load(io.BytesIO(data), allow_pickle=False)


def _read_csv(data: bytes) -> Any:
    import pandas

    return pandas.read_csv(io.BytesIO(data))


def _read_parquet(data: bytes) -> Any:
    import pandas

    return pandas.read_parquet(io.BytesIO(data))


def _npy_examples() -> List[Example]:
    import numpy

    arrays = [
        numpy.arange(12, dtype=numpy.int16).reshape(3, 4),
        numpy.array(["2024-01-01T12:00", "NaT"], dtype="datetime64[ns]"),
        numpy.array([(1, 2.5, b"x"), (2, -1.0, b"yz")], dtype=[("id", "<i4"), ("score", "<f8"), ("tag", "S2")]),
    ]
    return [Example(array, array) for array in arrays]


def _frame() -> Any:
    import pandas

    return pandas.DataFrame(
        {"count": [3, 1, 2], "ratio": [0.5, 1.25, -3.0], "label": ["a", "b,c", 'quote " here'],
         "flag": [True, False, True]}
    )


def _csv_examples() -> List[Example]:
    import pandas

    series = pandas.Series([1.5, 2.5, 4.0], name="score")
    return [Example(_frame(), _frame()), Example(series, series.to_frame())]


def _parquet_examples() -> List[Example]:
    import pandas

    frame = _frame().set_index(pandas.Index([10, 20, 30], name="row"))
    frame["when"] = pandas.to_datetime(["2024-01-01", "2024-01-02", None]).tz_localize("Europe/Paris")
    numbered = pandas.DataFrame({0: [1, 2], 1: [3.5, 4.5]})
    return [
        Example(frame, frame),
        Example(frame["ratio"], frame["ratio"].to_frame()),
        Example(numbered, numbered.rename(columns=str)),
    ]


NPY = ExportRule("value.npy", fits=lambda qualname: qualname == "numpy.ndarray", needs=("numpy",),
                 render=_render_npy, read_back=_read_npy, examples=_npy_examples)
CSV = ExportRule("value.csv", fits=_PANDAS_TABLE_TYPES.__contains__, needs=("pandas",),
                 render=_render_csv, read_back=_read_csv, examples=_csv_examples)
PARQUET = ExportRule("value.parquet", fits=_PANDAS_TABLE_TYPES.__contains__, needs=("pandas", "pyarrow"),
                     render=_render_parquet, read_back=_read_parquet, examples=_parquet_examples)
