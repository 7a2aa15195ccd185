"""Typed exports (mffs.exports): each file read back by the real consumer of its format, and the names listed from a
type string are exactly the ones that render."""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import fractions
import io
import json
import math
import os
import pickle
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, List

import numpy
import pandas
import pytest
from PIL import Image

from client.unpickle import loads
from mffs.exports import EXPORT_NAMES, ExportError, export_names, render_export
from tests.test_imports import imported_top_level_modules

REPO = Path(__file__).resolve().parent.parent


class Widget:
    """A class outside the unpickling allow-list: with trusted=False it loads as a placeholder."""

    def __init__(self, size: int):
        self.size = size


def typed_frame() -> pandas.DataFrame:
    return pandas.DataFrame(
        {
            "count": [3, 1, 2],
            "ratio": [0.5, 1.25, -3.0],
            "label": ["a", "b,c", 'quote " here'],
            "flag": [True, False, True],
        },
        index=pandas.Index([10, 20, 30], name="row"),
    )


def included_file_type() -> str:
    # The type string Metaflow stores for an IncludeFile artifact (the value itself resolves to str or bytes).
    from metaflow.includefile import IncludedFile

    return str(IncludedFile)


def matplotlib_figure(width_in: float, height_in: float, dpi: int) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=dpi)
    figure.add_subplot().plot([0, 1, 2], [2, 0, 1])
    return figure


def rendered(value: Any) -> List[str]:
    """The export names that render for `value` without an error. `content` is left out: it is chosen by the
    stored type (IncludedFile), while its value is any str or bytes."""
    names = []
    for name in EXPORT_NAMES:
        if name == "content":
            continue
        try:
            render_export(name, value)
        except ExportError:
            continue
        names.append(name)
    return names


#: one value of every kind that has exports
EXPORTABLE_VALUES = [
    {"a": 1},
    [1, "x"],
    (1, 2),
    {1, 2},
    frozenset({"a"}),
    "text",
    42,
    1.5,
    True,
    None,
    1 + 2j,
    collections.OrderedDict(a=1),
    collections.defaultdict(list),
    collections.Counter("abca"),
    collections.deque([1]),
    dt.datetime(2024, 5, 6, 7, 8, 9),
    dt.date(2024, 5, 6),
    dt.time(7, 8),
    dt.timedelta(seconds=3),
    decimal.Decimal("1.10"),
    fractions.Fraction(1, 3),
    uuid.UUID(int=7),
    numpy.float64(2.5),
    numpy.int32(7),
    numpy.bool_(True),
    numpy.datetime64("2024-05-06"),
    numpy.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")])[0],
    pandas.Timestamp("2024-05-06", tz="UTC"),
    pandas.Timedelta("1h"),
    b"\x00\xff",
    bytearray(b"ab"),
    numpy.arange(4),
    typed_frame(),
    typed_frame()["ratio"],
    Image.new("RGB", (3, 2)),
    matplotlib_figure(1, 1, 20),
]


@pytest.mark.parametrize("value", EXPORTABLE_VALUES, ids=lambda value: type(value).__name__)
def test_listed_exports_are_exactly_the_ones_that_render(value: Any) -> None:
    listed = export_names(str(type(value)))
    assert listed, "every kind in this table has at least one export"
    assert listed == rendered(value)


@pytest.mark.parametrize("value", EXPORTABLE_VALUES, ids=lambda value: type(value).__name__)
def test_untrusted_listing_is_exactly_what_renders_from_the_restricted_unpickler(value: Any) -> None:
    """Without --trust-pickles the mount loads values with the restricted unpickler: a type it does not load
    (matplotlib figures) lists no export rather than one failing with EIO; PIL images are data and load."""
    restricted_value = loads(pickle.dumps(value), trusted=False)
    assert export_names(str(type(value)), trusted=False) == rendered(restricted_value)
    if type(value).__module__.split(".")[0] == "matplotlib":
        assert export_names(str(type(value)), trusted=False) == []
    if type(value).__module__.split(".")[0] == "PIL":
        assert export_names(str(type(value)), trusted=False) == ["value.png"]


@pytest.mark.parametrize("content", ["name,city\nJosé,Zürich\n", b"\x89PNG\r\n\x1a\n\x00"], ids=["text", "binary"])
def test_included_file_exports_its_content_byte_exact(content: Any) -> None:
    assert export_names(included_file_type()) == ["content"]
    expected = content.encode("utf-8") if isinstance(content, str) else content
    assert render_export("content", content) == expected


def test_unrecognised_type_strings_list_no_exports() -> None:
    assert export_names(str(Widget)) == []
    assert export_names(str(numpy.ma.MaskedArray)) == []  # np.save cannot write masked arrays
    assert export_names("not a type string") == []


def test_csv_round_trips_a_frame_through_read_csv(tmp_path: Path) -> None:
    frame = typed_frame()
    path = tmp_path / "value.csv"
    path.write_bytes(render_export("value.csv", frame))
    pandas.testing.assert_frame_equal(pandas.read_csv(path, index_col=0), frame)


def test_csv_of_a_default_index_reads_back_with_default_arguments(tmp_path: Path) -> None:
    frame = typed_frame().reset_index(drop=True)
    path = tmp_path / "value.csv"
    path.write_bytes(render_export("value.csv", frame))
    assert path.read_text().splitlines()[0] == ",".join(frame.columns)  # no unnamed index column
    pandas.testing.assert_frame_equal(pandas.read_csv(path), frame)
    series = pandas.Series([1.5, 2.5, 4.0], name="score")
    path.write_bytes(render_export("value.csv", series))
    pandas.testing.assert_series_equal(pandas.read_csv(path).squeeze("columns"), series)


@pytest.mark.parametrize("index", [pandas.RangeIndex(1, 4), pandas.RangeIndex(0, 6, 2),
                                   pandas.RangeIndex(0, 3, name="row"), pandas.Index([2, 1, 0])])
def test_csv_keeps_any_other_index_as_a_column(tmp_path: Path, index) -> None:
    frame = typed_frame().set_axis(index)
    path = tmp_path / "value.csv"
    path.write_bytes(render_export("value.csv", frame))
    read = pandas.read_csv(path, index_col=0)
    pandas.testing.assert_frame_equal(read, frame, check_index_type=False)
    assert list(read.index) == list(index) and read.index.name == index.name


def test_csv_round_trips_a_named_series_with_its_index(tmp_path: Path) -> None:
    path = tmp_path / "value.csv"

    series = pandas.Series([1.5, 2.5], index=pandas.Index(["x", "y"], name="key"), name="score")
    path.write_bytes(render_export("value.csv", series))
    pandas.testing.assert_series_equal(pandas.read_csv(path, index_col=0).squeeze("columns"), series)


def test_parquet_round_trips_dtypes_and_index(tmp_path: Path) -> None:
    frame = typed_frame().assign(
        when=pandas.to_datetime(["2024-01-01", "2024-01-02", None]).tz_localize("Europe/Paris"),
        kind=pandas.Categorical(["x", "y", "x"]),
        maybe=pandas.array([1, None, 3], dtype="Int64"),
    )
    path = tmp_path / "value.parquet"
    path.write_bytes(render_export("value.parquet", frame))
    pandas.testing.assert_frame_equal(pandas.read_parquet(path), frame)

    series = frame["ratio"]
    path.write_bytes(render_export("value.parquet", series))
    pandas.testing.assert_frame_equal(pandas.read_parquet(path), series.to_frame())


def test_parquet_names_non_string_columns_by_their_str(tmp_path: Path) -> None:
    frame = pandas.DataFrame(numpy.arange(6).reshape(3, 2), columns=[0, 1])
    path = tmp_path / "value.parquet"
    path.write_bytes(render_export("value.parquet", frame))
    pandas.testing.assert_frame_equal(pandas.read_parquet(path), frame.rename(columns=str))


@pytest.mark.parametrize(
    "array",
    [
        numpy.arange(12, dtype=numpy.int16).reshape(3, 4),
        numpy.asfortranarray(numpy.linspace(0, 1, 6).reshape(2, 3)),
        numpy.array([1 + 2j, -0.5j], dtype=numpy.complex64),
        numpy.array([True, False]),
        numpy.array(["naïve", "日本"]),
        numpy.array([b"ab", b"\x00"]),
        numpy.array(["2024-01-01T12:00", "NaT"], dtype="datetime64[ns]"),
        numpy.array([1, 2], dtype="timedelta64[s]"),
        numpy.array([(1, 2.5, b"x"), (2, -1.0, b"yz")], dtype=[("id", "<i4"), ("score", "<f8"), ("tag", "S2")]),
        numpy.zeros((0, 3)),
    ],
    ids=lambda array: str(array.dtype),
)
def test_npy_round_trips_through_numpy_load_without_pickles(tmp_path: Path, array: numpy.ndarray) -> None:
    path = tmp_path / "value.npy"
    path.write_bytes(render_export("value.npy", array))
    loaded = numpy.load(path, allow_pickle=False)
    assert loaded.dtype == array.dtype and loaded.shape == array.shape
    numpy.testing.assert_array_equal(loaded, array)


def test_npy_of_an_object_array_needs_allow_pickle(tmp_path: Path) -> None:
    array = numpy.array([{"a": 1}, "text", None], dtype=object)
    path = tmp_path / "value.npy"
    path.write_bytes(render_export("value.npy", array))
    with pytest.raises(ValueError):
        numpy.load(path, allow_pickle=False)
    assert numpy.load(path, allow_pickle=True).tolist() == array.tolist()


def test_text_and_binary_are_byte_exact() -> None:
    text = "line one\nnaïve — 日本語 🙂\r\n\x00 tail"
    assert render_export("value.txt", text) == text.encode("utf-8")
    # A str decoded with surrogateescape (undecodable input) gets its original bytes back.
    raw = b"caf\xe9 latin-1"
    assert render_export("value.txt", raw.decode("utf-8", "surrogateescape")) == raw
    blob = bytes(range(256))
    assert render_export("value.bin", blob) == blob
    assert render_export("value.bin", bytearray(blob)) == blob


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "1", "I;16"])
def test_png_of_a_pil_image_opens_with_pil_with_the_same_pixels(mode: str) -> None:
    image = Image.linear_gradient("L").resize((37, 21)).convert(mode)
    png = Image.open(io.BytesIO(render_export("value.png", image)))
    assert png.format == "PNG" and png.size == (37, 21) and png.mode == mode
    assert png.tobytes() == image.tobytes()


@pytest.mark.parametrize(
    "mode, png_mode", [("CMYK", "RGB"), ("YCbCr", "RGB"), ("F", "RGB"), ("LAB", "RGB"), ("RGBa", "RGBA")]
)
def test_png_converts_modes_png_cannot_store(mode: str, png_mode: str) -> None:
    image = Image.linear_gradient("L").resize((8, 5)).convert("RGBA").convert(mode)
    png = Image.open(io.BytesIO(render_export("value.png", image)))
    assert png.size == (8, 5) and png.mode == png_mode
    assert png.tobytes() == image.convert(png_mode).tobytes()


def test_png_of_an_image_from_a_file_and_a_pickled_figure() -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (4, 3), (255, 0, 0, 128)).save(buffer, format="PNG")
    opened = Image.open(io.BytesIO(buffer.getvalue()))  # a PngImageFile, as an artifact would be
    assert export_names(str(type(opened))) == ["value.png"]
    assert Image.open(io.BytesIO(render_export("value.png", opened))).tobytes() == opened.tobytes()

    # A figure as the client loads it from an artifact: unpickled, without pyplot or a canvas of its own.
    figure = loads(pickle.dumps(matplotlib_figure(3, 2, 50), protocol=4), trusted=True)
    png = Image.open(io.BytesIO(render_export("value.png", figure)))
    assert png.format == "PNG" and png.size == (150, 100)


def test_json_renders_python_data_by_the_documented_rules() -> None:
    value = {
        "text": "naïve 日本",
        "numbers": [1, -2.5, 10**30, True, None],
        "non_finite": [math.nan, math.inf, -math.inf],
        1: "int key",
        2.5: "float key",
        None: "none key",
        False: "bool key",
        (1, "a"): "tuple key",
        dt.date(2024, 5, 6): "date key",
        "tuple": (1, (2, 3)),
        "set": {"b", "c", "a"},
        "mixed_set": frozenset({1, "x"}),
        "deque": collections.deque([3, 4]),
        "counter": collections.Counter("aab"),
        "ordered": collections.OrderedDict([("z", 1), ("y", 2)]),
        "when": dt.datetime(2024, 5, 6, 7, 8, 9, 10, tzinfo=dt.timezone.utc),
        "day": dt.date(2024, 5, 6),
        "clock": dt.time(7, 8, 9),
        "duration": dt.timedelta(days=1, seconds=1, microseconds=500000),
        "decimal": decimal.Decimal("1.10"),
        "fraction": fractions.Fraction(1, 3),
        "complex": 1.5 - 2j,
        "bytes": b"\x00\xffab",
        "uuid": uuid.UUID(int=1),
        "numpy": [numpy.int64(7), numpy.float32(0.5), numpy.bool_(False), numpy.str_("s"), numpy.float64("nan")],
        "numpy_time": numpy.datetime64("2024-05-06T07:08:09", "s"),
        "array": numpy.array([[1, 2], [3, 4]], dtype=numpy.uint8),
        "pandas": [pandas.Timestamp("2024-05-06 07:08", tz="UTC"), pandas.NaT, pandas.NA, pandas.Timedelta("2s")],
        "object": Widget(3),
    }
    expected = {
        "text": "naïve 日本",
        "numbers": [1, -2.5, 10**30, True, None],
        "non_finite": [None, "Infinity", "-Infinity"],
        "1": "int key",
        "2.5": "float key",
        "null": "none key",
        "false": "bool key",
        "(1, 'a')": "tuple key",
        "2024-05-06": "date key",
        "tuple": [1, [2, 3]],
        "set": ["a", "b", "c"],
        "mixed_set": ["x", 1],  # not comparable: sorted by JSON text, '"x"' < '1'
        "deque": [3, 4],
        "counter": {"a": 2, "b": 1},
        "ordered": {"z": 1, "y": 2},
        "when": "2024-05-06T07:08:09.000010+00:00",
        "day": "2024-05-06",
        "clock": "07:08:09",
        "duration": 86401.5,
        "decimal": "1.10",
        "fraction": "1/3",
        "complex": {"real": 1.5, "imag": -2.0},
        "bytes": "AP9hYg==",
        "uuid": "00000000-0000-0000-0000-000000000001",
        "numpy": [7, 0.5, False, "s", None],
        "numpy_time": "2024-05-06T07:08:09",
        "array": [[1, 2], [3, 4]],
        "pandas": ["2024-05-06T07:08:00+00:00", None, None, 2.0],
        "object": repr(value["object"]),
    }
    data = render_export("value.json", value)
    assert data.endswith(b"}\n")
    parsed = json.loads(data.decode("utf-8"))
    assert parsed == expected
    assert list(parsed) == list(expected)  # the value's own key order
    assert data == (json.dumps(expected, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def test_json_of_top_level_scalars_and_text() -> None:
    assert json.loads(render_export("value.json", "naïve")) == "naïve"
    assert json.loads(render_export("value.json", numpy.float64(0.25))) == 0.25
    assert json.loads(render_export("value.json", None)) is None
    assert json.loads(render_export("value.json", dt.timedelta(minutes=1))) == 60.0
    # Lone surrogates cannot be UTF-8: the file falls back to ASCII escapes, which decode to the same string.
    assert json.loads(render_export("value.json", ["\udcff"])) == ["\udcff"]
    # Integers beyond 64 bits are JSON too (orjson refuses them; json writes them)
    assert json.loads(render_export("value.json", {"big": [2**70, -(2**64)]})) == {"big": [2**70, -(2**64)]}


def test_json_output_does_not_depend_on_hash_seeds() -> None:
    code = (
        "import sys; from mffs.exports import render_export\n"
        "value = {'s': set('abcdefghij'), 'f': frozenset({('x', 1), 2})}\n"
        "sys.stdout.buffer.write(render_export('value.json', value))\n"
    )
    outputs = set()
    for seed in ("1", "2", "3"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(REPO))
        outputs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True).stdout)
    assert len(outputs) == 1


def test_json_refuses_self_containing_values_and_colliding_keys() -> None:
    loop: list = [1]
    loop.append(loop)
    with pytest.raises(ExportError, match="contains itself"):
        render_export("value.json", loop)
    with pytest.raises(ExportError, match="both become the JSON key '1'"):
        render_export("value.json", {1: "int", "1": "str"})
    # The same object twice is not a cycle.
    shared = [1]
    assert json.loads(render_export("value.json", [shared, shared])) == [[1], [1]]


def test_untrusted_placeholder_is_a_clear_error_naming_the_flag() -> None:
    placeholder = loads(pickle.dumps(Widget(3), protocol=4), trusted=False)
    with pytest.raises(ExportError, match="--trust-pickles"):
        render_export("value.json", placeholder)
    # Inside a container the placeholder is kept as its repr, which names the flag too.
    assert "--trust-pickles" in json.loads(render_export("value.json", {"w": placeholder}))["w"]


def test_wrong_kind_and_unknown_name_are_clear_errors() -> None:
    with pytest.raises(ExportError, match="value.csv needs a pandas DataFrame or Series, not a dict"):
        render_export("value.csv", {"a": 1})
    with pytest.raises(ExportError, match="is not an export file"):
        render_export("repr.txt", "x")


def test_optional_libraries_decide_the_listing_and_nothing_heavy_is_imported() -> None:
    type_strings = [str(pandas.DataFrame), str(numpy.ndarray), str(Image.Image), "<class 'matplotlib.figure.Figure'>"]
    listing = "from mffs.exports import export_names\nnames = [export_names(t) for t in %r]\n" % type_strings
    loaded = imported_top_level_modules(listing)
    assert "mffs" in loaded
    assert [m for m in ("numpy", "pandas", "pyarrow", "PIL", "matplotlib") if m in loaded] == []

    # With pyarrow, Pillow and matplotlib made unimportable, their exports are not listed.
    code = (
        "import sys\n"
        "for name in ('pyarrow', 'PIL', 'matplotlib'):\n"
        "    sys.modules[name] = None  # what an uninstalled package looks like to import machinery\n"
        + listing
        + "print(names)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str([["value.csv"], ["value.npy"], [], []])
