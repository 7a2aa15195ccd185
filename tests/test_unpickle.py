"""Safe unpickling (client.unpickle.loads): with trusted=False a pickle cannot run code, not even through the
numpy/pandas names the allow-list admits, while the data types artifacts really hold load exactly as pickle loads
them; with trusted=True everything loads as Python would."""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import decimal
import fractions
import gzip
import importlib
import io
import os
import pickle
import shlex
import struct
import subprocess
import sys
import time
import uuid
import zoneinfo
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy
import pandas
import pytest

from client import unpickle
from client.unpickle import UntrustedObject, loads

# --- hand-written pickles: the opcodes an attacker can write, not only what pickle.dumps produces ----------------


def _text(value: str) -> bytes:
    data = value.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _operand(value: Any) -> bytes:
    if isinstance(value, Op):
        return value.code
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, bool) or value is None:
        return {None: b"N", True: b"\x88", False: b"\x89"}[value]
    if isinstance(value, int):
        return b"J" + struct.pack("<i", value)  # BININT
    if isinstance(value, list):
        return b"(" + b"".join(_operand(item) for item in value) + b"l"  # MARK ... LIST
    raise TypeError(value)


class Op:
    """A pickle fragment that leaves one object on the stack."""

    def __init__(self, code: bytes):
        self.code = code

    def __call__(self, *args: Any) -> "Op":
        # MARK args TUPLE REDUCE: call whatever this fragment produced (a global or an earlier call's result).
        return Op(self.code + b"(" + b"".join(_operand(arg) for arg in args) + b"tR")


def global_(module: str, name: str) -> Op:
    return Op(_text(module) + _text(name) + b"\x93")  # STACK_GLOBAL (protocol 4 resolves dotted names)


def program(op: Op) -> bytes:
    return b"\x80\x04" + op.code + b"."


# --- pickles that run code on load -------------------------------------------------------------------------------


class _Reduces:
    """Pickles as `callable(*args)`, the way a malicious artifact would (pickle.dumps writes the reference)."""

    def __init__(self, func: Callable, *args: Any):
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def _touch_command(marker: Path) -> str:
    return "touch %s" % shlex.quote(str(marker))


def _touch_code(marker: Path) -> str:
    return "open(%r, 'w').close()" % str(marker)


def _evil_pickle_file(marker: Path, path: Path) -> str:
    path.write_bytes(pickle.dumps(_Reduces(os.system, _touch_command(marker)), protocol=4))
    return str(path)


def _evil_npy_file(marker: Path, path: Path) -> str:
    numpy.save(path, numpy.array([_Reduces(os.system, _touch_command(marker))], dtype=object), allow_pickle=True)
    return str(path)


class Attack(NamedTuple):
    build: Callable[[Path, Path], bytes]  # (marker, scratch directory) -> pickle bytes
    refused: str  # the global named by the placeholder that comes out with trusted=False


ATTACKS = {
    "os.system": Attack(lambda m, d: pickle.dumps(_Reduces(os.system, _touch_command(m)), protocol=4), "posix.system"),
    "exec": Attack(lambda m, d: pickle.dumps(_Reduces(exec, _touch_code(m)), protocol=4), "builtins.exec"),
    "eval": Attack(
        lambda m, d: pickle.dumps(_Reduces(eval, "__import__('os').system(%r)" % _touch_command(m))),
        "builtins.eval",
    ),
    "subprocess.Popen": Attack(
        lambda m, d: pickle.dumps(_Reduces(subprocess.Popen, ["touch", str(m)]), protocol=4), "subprocess.Popen"
    ),
    "getattr(__import__('os'), 'system')": Attack(
        lambda m, d: program(
            global_("builtins", "getattr")(global_("builtins", "__import__")("os"), "system")(_touch_command(m))
        ),
        "builtins.getattr",
    ),
    "pickle.loads": Attack(
        lambda m, d: pickle.dumps(
            _Reduces(pickle.loads, pickle.dumps(_Reduces(os.system, _touch_command(m)))), protocol=4
        ),
        "_pickle.loads",
    ),
    "pandas.read_pickle": Attack(
        lambda m, d: program(global_("pandas", "read_pickle")(_evil_pickle_file(m, d / "evil.pkl"))),
        "pandas.read_pickle",
    ),
    "numpy.load(allow_pickle=True)": Attack(
        lambda m, d: program(global_("numpy", "load")(_evil_npy_file(m, d / "evil.npy"), None, True)), "numpy.load"
    ),
    # Through the names the allow-list admits: a dotted name (protocol 4 resolves it attribute by attribute)
    # that starts at an allowed pandas class and walks to the builtins' exec.
    "dotted name from an allowed class": Attack(
        lambda m, d: program(
            global_("pandas.core.frame", "DataFrame.__init__.__builtins__.get")("exec")(_touch_code(m))
        ),
        "pandas.core.frame.DataFrame.__init__.__builtins__.get",
    ),
    # pandas' expression engine: an Expr instance evaluates its string when called; `@name` resolves names in the
    # globals of the frame its Scope captures (level -2 = pandas' scope module, which imports sys).
    "pandas Expr": Attack(
        lambda m, d: program(
            global_("pandas.core.computation.expr", "Expr")(
                "@sys.modules.get('os').system(%r)" % _touch_command(m), "python", "pandas", None, -2
            )()
        ),
        "pandas.core.computation.expr.Expr",
    ),
    # numpy's test runner: pytest with the pickle's arguments (it writes a report where the pickle says).
    "numpy PytestTester": Attack(
        lambda m, d: program(
            global_("numpy._pytesttester", "PytestTester")("numpy")(
                "fast", 0, ["--junitxml=%s" % m, "-p", "no:cacheprovider", "-q"], False, False, -1, ["numpy.version"]
            )
        ),
        "numpy._pytesttester.PytestTester",
    ),
}


def _wait_for(path: Path, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_code_running_pickle_runs_only_when_trusted(tmp_path: Path, attack: str) -> None:
    build, refused = ATTACKS[attack]
    marker = tmp_path / "MARKER"
    data = build(marker, tmp_path)

    placeholder = loads(data, trusted=False)
    time.sleep(0.2)  # a spawned process would have touched the marker by now
    assert not marker.exists(), "the pickle ran code with trusted=False"
    assert isinstance(placeholder, UntrustedObject)
    assert refused in repr(placeholder) and "--trust-pickles" in repr(placeholder)

    result = loads(data, trusted=True)
    if isinstance(result, subprocess.Popen):
        result.wait(timeout=10)
    assert _wait_for(marker), "the payload is broken: it does not run even with trusted=True"


def test_untrusted_pickle_cannot_run_library_modules_by_importing_them(capfd: pytest.CaptureFixture) -> None:
    # Importing numpy.f2py.__main__ runs f2py's command line (it prints and exits): checking a name must not
    # import modules a pickle picks.
    data = program(global_("numpy.f2py.__main__", "main")())
    placeholder = loads(data, trusted=False)
    assert isinstance(placeholder, UntrustedObject)
    assert capfd.readouterr().out == ""
    with pytest.raises(SystemExit):
        loads(data, trusted=True)


@pytest.mark.parametrize("module, name", sorted(unpickle._KNOWN_DATA_CLASSES))
def test_data_classes_known_by_name_are_allow_listed_classes(module: str, name: str) -> None:
    # `allowed` answers for these without importing their package: each is an exact entry of the allow-list, and a
    # class there.
    assert (module, name) in unpickle._ALLOWED and unpickle.allowed(module, name)
    assert isinstance(getattr(importlib.import_module(module), name), type)


def test_allow_list_names_one_guard_per_object() -> None:
    # The unpickler keys a call's guard by the object a name resolves to: two names of one object (numpy 1.x and
    # 2.x paths, pandas 2 and 3 paths) must not give it different guards, or the laxer name would lift the other.
    guards: dict = {}
    for (module, name), guard in unpickle._ALLOWED.items():
        try:
            obj = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue  # a name of another numpy/pandas version
        guards.setdefault(id(obj), (obj, set()))[1].add(guard)
    mixed = {repr(obj): found for obj, found in guards.values() if len(found) > 1}
    assert mixed == {}


def test_allowed_does_not_import_the_module_it_is_asked_about() -> None:
    code = (
        "import sys\n"
        "from client import unpickle\n"
        "before = set(sys.modules)\n"
        "assert unpickle.allowed('pandas', 'DataFrame') and unpickle.allowed('numpy', 'ndarray')\n"
        "assert not unpickle.allowed('numpy', 'memmap') and not unpickle.allowed('numpy.f2py.__main__', 'main')\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("module, name", [("pandas", "Index"), ("pathlib", "PurePath")])
def test_untrusted_pickle_cannot_change_a_class_for_the_whole_process(module: str, name: str) -> None:
    # BUILD with a slot state on a class sets class attributes: here Index.__repr__ = os.getcwd, which would
    # break every later repr of an Index in the mount's process.
    cls = getattr(importlib.import_module(module), name)
    before = dict(vars(cls))
    patch = Op(global_(module, name).code + b"N}" + _text("__repr__") + global_("os", "getcwd").code + b"s\x86b")
    data = program(patch)
    try:
        with contextlib.suppress(Exception):  # refusing the pickle is as good as ignoring the state
            loads(data, trusted=False)
        assert dict(vars(cls)) == before
        loads(data, trusted=True)
        assert vars(cls)["__repr__"] is os.getcwd  # the payload is real
    finally:
        for attribute in set(vars(cls)) - set(before):
            delattr(cls, attribute)
        for attribute, value in before.items():
            if vars(cls).get(attribute) is not value:
                setattr(cls, attribute, value)


def _masked_state() -> bytes:
    state = (1, (3,), numpy.dtype("f8"), False, bytes(24), bytes(3), 0.0)
    return pickle.dumps(state, protocol=4)[2:-1]  # the tuple's opcodes, without PROTO and STOP


# Objects a constructor hands out to every caller: a BUILD on one would change it for the whole process.
SHARED_OBJECTS = {
    "numpy.ma.masked": ("numpy.ma.masked.shape", Op(global_("numpy.ma.core", "MaskedConstant")().code + b"MASKED")),
    "uuid.SafeUUID.safe": ("uuid.SafeUUID.safe.name", Op(global_("uuid", "SafeUUID")(0).code + b"}"
                                                          + _text("_name_") + _text("hacked") + b"s")),
}


@pytest.mark.parametrize("name", list(SHARED_OBJECTS))
def test_untrusted_pickle_cannot_change_an_object_shared_by_the_process(name: str) -> None:
    shown, make = SHARED_OBJECTS[name]
    data = program(Op(make.code.replace(b"MASKED", _masked_state()) + b"b"))  # BUILD
    code = (
        "import sys, numpy, uuid\n"
        "from client.unpickle import loads\n"
        "before = repr(%s)\n"
        "try:\n"
        "    loads(sys.stdin.buffer.read(), trusted=%s)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc, file=sys.stderr)\n"
        "print(before == repr(%s))\n"
    )
    results = {}
    for trusted in (False, True):
        done = subprocess.run([sys.executable, "-c", code % (shown, trusted, shown)], input=data, capture_output=True,
                              timeout=60, cwd=Path(__file__).resolve().parents[1])
        results[trusted] = done.stdout.decode().strip()
        if not trusted:
            assert b"that is built, shared or in use: refused" in done.stderr
    assert results == {False: "True", True: "False"}  # unchanged untrusted; the payload is real


# --- data loads identically --------------------------------------------------------------------------------------


def _data_values() -> dict:
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    return {
        "int64 matrix": numpy.arange(12, dtype=numpy.int64).reshape(3, 4),
        "float32 fortran": numpy.asfortranarray(numpy.linspace(-1, 1, 6, dtype=numpy.float32).reshape(2, 3)),
        "float nan": numpy.array([1.5, numpy.nan, -numpy.inf]),
        "complex128": numpy.array([1 + 2j, -3j]),
        "bool": numpy.array([True, False]),
        "unicode": numpy.array(["naïve", "日本"]),
        "bytes": numpy.array([b"ab", b"\x00\xff"]),
        "datetime64": numpy.array(["2024-01-01T12:00:00.123456789", "NaT"], dtype="datetime64[ns]"),
        "datetime64 days": numpy.array(["2024-01-01", "1970-01-02"], dtype="datetime64[D]"),
        "timedelta64": numpy.array([1, -2], dtype="timedelta64[ms]"),
        "structured": numpy.array(
            [(1, 2.5, b"x", "a"), (2, -1.0, b"yz", "b")],
            dtype=[("id", "<i4"), ("score", "<f8"), ("tag", "S2"), ("name", "<U3")],
        ),
        "object array": numpy.array([1, "a", None, (2, 3)], dtype=object),
        "0-d": numpy.array(3.5),
        "numpy scalars": [numpy.float64(2.5), numpy.int8(-3), numpy.bool_(True), numpy.datetime64("2024-05-06")],
        "DataFrame": pandas.DataFrame(
            {
                "count": [3, 1, 2],
                "ratio": [0.5, numpy.nan, -3.0],
                "label": ["a", "b", None],
                "flag": [True, False, True],
                "when": pandas.to_datetime(["2024-01-01", "2024-06-01", None]).tz_localize("Europe/Paris"),
                "utc": pandas.to_datetime(["2024-01-01 10:00", "2024-01-02 00:00", "2024-01-03 23:59"], utc=True),
                "kind": pandas.Categorical(["x", "y", "x"]),
                "maybe": pandas.array([1, None, 3], dtype="Int64"),
            },
            index=pandas.Index(["r1", "r2", "r3"], name="row"),
        ),
        "Series": pandas.Series([1.5, 2.5], index=pandas.Index(["x", "y"]), name="score"),
        "string Series": pandas.Series(["a", None, "c"], dtype="string"),
        "Index": pandas.Index([3, 1, 2], name="ids"),
        "RangeIndex": pandas.RangeIndex(2, 10, 2),
        "MultiIndex": pandas.MultiIndex.from_tuples([(1, "a"), (2, "b")], names=["n", "s"]),
        "DatetimeIndex": pandas.date_range("2024-01-01", periods=3, freq="D", tz="UTC"),
        "Categorical": pandas.Categorical(["lo", "hi", "lo"], categories=["lo", "hi"], ordered=True),
        "Timestamp tz": pandas.Timestamp("2024-03-31 01:30", tz="Europe/Paris"),
        "Timestamp utc": pandas.Timestamp("2024-03-31 01:30:00.000000001", tz="UTC"),
        "Timedelta": pandas.Timedelta("1 days 02:03:04"),
        "NaT and NA": [pandas.NaT, pandas.NA],
        "datetime": dt.datetime(2024, 5, 6, 7, 8, 9, 123456),
        "datetime utc": dt.datetime(2024, 5, 6, 7, 8, tzinfo=dt.timezone.utc),
        "datetime offset": dt.datetime(2024, 5, 6, tzinfo=dt.timezone(dt.timedelta(hours=-3), "BRT")),
        "datetime zoneinfo": dt.datetime(2024, 5, 6, 7, 8, tzinfo=paris),
        "date, time, timedelta": [dt.date(2024, 5, 6), dt.time(7, 8, 9), dt.timedelta(days=-1, seconds=5)],
        "Decimal": [decimal.Decimal("1.10"), decimal.Decimal("-Infinity"), decimal.Decimal("NaN")],
        "OrderedDict": collections.OrderedDict([("z", 1), ("a", 2)]),
        "defaultdict": collections.defaultdict(list, {"a": [1, 2]}),
        "Counter": collections.Counter("abracadabra"),
        "deque": collections.deque([1, 2, 3], maxlen=5),
        "set": {1, "two", (3, 4)},
        "frozenset": frozenset({"a", "b"}),
        "complex": [1 + 2j, complex(0, -1)],
        "bytes and bytearray": [b"\x00\xff", bytearray(b"abc")],
        "Fraction, UUID, range": [fractions.Fraction(2, 3), uuid.UUID(int=42), range(1, 10, 3)],
        "nested builtins": {"a": [1, 2.5, None, True], "b": ("t", {"c": b"d"}), 3: {4, 5}},
    }


DATA = _data_values()


def assert_same(expected: Any, loaded: Any) -> None:
    if expected is pandas.NaT or expected is pandas.NA:  # singletons, and NA refuses == in a bool context
        assert loaded is expected
        return
    assert type(loaded) is type(expected)
    if isinstance(expected, pandas.DataFrame):
        pandas.testing.assert_frame_equal(loaded, expected)
    elif isinstance(expected, pandas.Series):
        pandas.testing.assert_series_equal(loaded, expected)
    elif isinstance(expected, pandas.Index):
        pandas.testing.assert_index_equal(loaded, expected, exact=True)
    elif isinstance(expected, pandas.Categorical):
        pandas.testing.assert_extension_array_equal(loaded, expected)
    elif isinstance(expected, numpy.ndarray):
        assert loaded.dtype == expected.dtype and loaded.shape == expected.shape
        assert loaded.flags.f_contiguous == expected.flags.f_contiguous
        if expected.dtype == object:
            assert loaded.tolist() == expected.tolist()
        else:
            numpy.testing.assert_array_equal(loaded, expected)  # NaN and NaT compare equal here
    elif isinstance(expected, (set, frozenset)):
        # A set's repr follows its hash table, and string hashes change per process (PYTHONHASHSEED): even
        # pickle.loads may print {'b', 'a'} for {'a', 'b'}. Equality is the comparison that holds.
        assert loaded == expected
    elif isinstance(expected, (list, tuple)):
        assert len(loaded) == len(expected)
        for expected_item, loaded_item in zip(expected, loaded):
            assert_same(expected_item, loaded_item)
    else:
        if isinstance(expected, collections.defaultdict):
            assert loaded.default_factory is expected.default_factory
        if isinstance(expected, collections.deque):
            assert loaded.maxlen == expected.maxlen
        # repr shows what == may not (time zones, Decimal digits, NaN); == covers containers' contents.
        assert repr(loaded) == repr(expected)
        if not (isinstance(expected, decimal.Decimal) and expected.is_nan()):
            assert loaded == expected


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("kind", list(DATA))
def test_data_loads_identically_without_trust(kind: str, protocol: int) -> None:
    value = DATA[kind]
    data = pickle.dumps(value, protocol=protocol)
    assert_same(value, pickle.loads(data))  # the comparison itself is sound
    assert_same(value, loads(data, trusted=False))
    assert_same(value, loads(data, trusted=True))


def test_untrusted_load_that_meets_a_global_late_starts_over_from_a_stream() -> None:
    # A pickle of plain data loads with the C unpickler; the first global it names sends the load back to the
    # start, with the checking unpickler: from bytes, and from a gzip stream (large blobs are unpickled while
    # they are decompressed).
    value = [list(range(50_000)), {"text": "x" * 1000}, dt.date(2024, 1, 2), decimal.Decimal("1.5")]
    data = pickle.dumps(value, protocol=4)
    assert_same(value, loads(data, trusted=False))
    with gzip.GzipFile(fileobj=io.BytesIO(gzip.compress(data))) as stream:
        assert_same(value, unpickle.load(stream, trusted=False))


# --- classes that cannot be imported -----------------------------------------------------------------------------


def test_user_class_from_the_flow_file_is_a_placeholder_or_a_clear_error() -> None:
    # The way TypesFlow's `pt` artifact is made: a class defined in the script that ran, pickled as __main__.Point.
    code = (
        "import pickle, sys\n"
        "class Point:\n"
        "    def __init__(self, x, y):\n"
        "        self.x, self.y = x, y\n"
        "sys.stdout.buffer.write(pickle.dumps(Point(1, 2), protocol=4))\n"
    )
    data = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=60).stdout
    assert b"__main__" in data and b"Point" in data

    placeholder = loads(data, trusted=False)
    assert isinstance(placeholder, UntrustedObject)
    assert "__main__.Point" in repr(placeholder) and "--trust-pickles" in repr(placeholder)

    with pytest.raises((ImportError, AttributeError)) as raised:
        loads(data, trusted=True)
    assert "__main__.Point" in str(raised.value)


# --- Metaflow's own classes --------------------------------------------------------------------------------------


def test_metaflow_classes_load_as_stand_ins_without_trust() -> None:
    from metaflow.exception import MetaflowExceptionWrapper
    from metaflow.includefile import IncludedFile
    from metaflow.tuple_util import ForeachFrame

    try:
        raise ValueError("boom")
    except ValueError as exc:
        wrapper = MetaflowExceptionWrapper(exc)
    frames = [ForeachFrame("body", "items", 3, 1, "'b'")]
    descriptor = {"type": "uploader-v2", "url": "local:///tmp/x", "is_text": True, "encoding": "utf-8", "size": 3}
    included = IncludedFile(descriptor)

    loaded_wrapper = loads(pickle.dumps(wrapper, protocol=4), trusted=False)
    assert str(loaded_wrapper) == str(wrapper) and "ValueError: boom" in str(loaded_wrapper)
    assert (loaded_wrapper.type, loaded_wrapper.exception) == ("builtins.ValueError", "boom")

    loaded_frames = loads(pickle.dumps(frames, protocol=4), trusted=False)
    assert [tuple(frame) for frame in loaded_frames] == [tuple(frame) for frame in frames]
    assert loaded_frames[0].index == 1 and loaded_frames[0].step == "body"

    assert loads(pickle.dumps(included, protocol=4), trusted=False).descriptor == descriptor


# --- the allow-list is what real values pickle as ----------------------------------------------------------------


def _library_values() -> dict:
    import pyarrow
    from PIL import Image

    values: dict = {}
    for code in ["?", "b", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "g", "c8", "c16", "G",
                 "U3", "S3", "V4", "M8[ns]", "m8[s]", "O"]:
        values["array " + code] = numpy.zeros(3, dtype=code)
        values["scalar " + code] = numpy.zeros(1, dtype=code)[0]
    values.update({
        "structured": numpy.zeros(2, dtype=[("a", "i4"), ("b", "f8", (2,)), ("c", "O")]),
        "StringDType": numpy.array(["a", "bb"], dtype=numpy.dtypes.StringDType()),
        "masked": numpy.ma.masked_array([1, 2, 3], mask=[0, 1, 0]),
        "masked constant": numpy.ma.masked,
        "matrix": numpy.matrix([[1, 2]]),
        "recarray": numpy.rec.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
        "RandomState": numpy.random.RandomState(0),
        "SeedSequence": numpy.random.SeedSequence(0),
        "dtypes": [numpy.dtype("f8"), numpy.dtype([("a", "i4")]), numpy.dtype(("i2", (2, 3))), numpy.dtype(">f8"),
                   numpy.dtype(">U3"), numpy.dtype("M8[D]"), numpy.dtype(("O", (2,))), numpy.dtype("V5")],
        "structured arrays": [numpy.zeros(2, dtype=dtype) for dtype in (
            numpy.dtype([("a", "u1"), ("b", "f8")], align=True),
            numpy.dtype({"names": ["a", "b"], "formats": ["i4", "f8"], "titles": ["A title", "B"]}),
            numpy.dtype([("a", [("x", "i2"), ("y", "O")]), ("b", "f8", (2, 2))]),
            numpy.dtype({"names": ["a", "b"], "formats": ["i4", "i4"], "offsets": [0, 8], "itemsize": 16}),
            numpy.dtype([("a", "u1"), ("b", [("c", "u1"), ("d", "f8")])], align=True),
            numpy.dtype((numpy.record, [("a", "i4")])),
        )],
    })
    for name in ["PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"]:
        values["Generator " + name] = numpy.random.Generator(getattr(numpy.random, name)(0))
        values[name] = getattr(numpy.random, name)(0)
    values["DataFrame of every column kind"] = pandas.DataFrame({
        "int": [1, 2], "str": ["x", "y"], "categorical": pandas.Categorical(["p", "q"]),
        "tz": pandas.to_datetime(["2024-01-01", None]).tz_localize("Europe/Paris"),
        "Int64": pandas.array([1, None], dtype="Int64"), "boolean": pandas.array([True, None], dtype="boolean"),
        "Float64": pandas.array([1.5, None], dtype="Float64"), "string": pandas.array(["a", None], dtype="string"),
        "period": pandas.period_range("2024-01", periods=2, freq="M"), "interval": pandas.interval_range(0, 2),
        "sparse": pandas.arrays.SparseArray([0, 1]), "timedelta": pandas.to_timedelta([1, 2], unit="s"),
        "string[pyarrow]": pandas.array(["a", None], dtype="string[pyarrow]"),
        "int64[pyarrow]": pandas.array([1, None], dtype="int64[pyarrow]"),
    })
    values["DataFrame with MultiIndex columns"] = pandas.DataFrame(
        [[1, 2]], columns=pandas.MultiIndex.from_tuples([("a", "b"), ("a", "c")]))
    values["indexes"] = [
        pandas.Index([1, 2]), pandas.RangeIndex(3), pandas.MultiIndex.from_tuples([(1, "a")]),
        pandas.date_range("2024", periods=2, tz="UTC", freq="h"), pandas.timedelta_range("1d", periods=2),
        pandas.period_range("2024", periods=2, freq="D"), pandas.interval_range(0, 3),
        pandas.CategoricalIndex(["a", "b"]), pandas.Index(["a", 1], dtype=object), pandas.Index([True]),
        pandas.Index([1], dtype="uint8"), pandas.Index([1, None], dtype="Int64"), pandas.Index([1j]),
    ]
    values["pandas scalars"] = [pandas.Timestamp("2024-01-01T00:00+05:00"), pandas.Timestamp("2024"),
                                pandas.Period("2024-01", freq="M"), pandas.Interval(0, 1)]
    values["offsets"] = [pandas.offsets.Day(2), pandas.offsets.MonthEnd(), pandas.offsets.BusinessDay(),
                         pandas.offsets.Hour(), pandas.offsets.Week(weekday=1), pandas.offsets.QuarterEnd(),
                         pandas.offsets.YearBegin(), pandas.DateOffset(months=1)]
    values["pandas dtypes"] = [pandas.CategoricalDtype(["a"]), pandas.DatetimeTZDtype(tz="UTC"),
                               pandas.PeriodDtype("D"), pandas.IntervalDtype("int64"), pandas.Int64Dtype(),
                               pandas.StringDtype(), pandas.BooleanDtype(), pandas.Float64Dtype(),
                               pandas.ArrowDtype(pyarrow.int64()), pandas.SparseDtype("int64", 0)]
    values["pandas arrays"] = [pandas.arrays.IntervalArray.from_breaks([0, 1, 2]),
                               pandas.array(pandas.period_range("2024", periods=2, freq="D")),
                               pandas.array(pandas.date_range("2024", periods=2)),
                               pandas.array(pandas.timedelta_range("1d", periods=2)),
                               pandas.arrays.NumpyExtensionArray(numpy.array([1, 2])),
                               pandas.arrays.SparseArray([0, 0, 1])]
    values["arrow table"] = pyarrow.table({"a": [1, 2], "b": ["x", None], "c": [[1], [2, 3]],
                                           "d": [{"x": 1}, {"x": 2}]})
    values["arrow arrays"] = [pyarrow.array([1, 2, None]), pyarrow.chunked_array([[1], [2]]),
                              pyarrow.array(["a", "b", "a"]).dictionary_encode(),
                              pyarrow.array([decimal.Decimal("1.2")]),
                              pyarrow.array([dt.datetime(2024, 1, 1)], type=pyarrow.timestamp("us", tz="UTC"))]
    values["arrow others"] = [pyarrow.scalar(1), pyarrow.scalar({"a": 1}), pyarrow.record_batch({"a": [1]}),
                              pyarrow.schema([("a", pyarrow.int64())]), pyarrow.field("a", pyarrow.string()),
                              pyarrow.py_buffer(b"abc")]
    values["arrow types"] = [pyarrow.int8(), pyarrow.timestamp("ns", tz="UTC"), pyarrow.list_(pyarrow.int64()),
                             pyarrow.struct([("a", pyarrow.int64())]), pyarrow.dictionary(pyarrow.int32(),
                                                                                        pyarrow.string()),
                             pyarrow.decimal128(10, 2), pyarrow.large_string(), pyarrow.binary(3),
                             pyarrow.map_(pyarrow.string(), pyarrow.int64()), pyarrow.date32(),
                             pyarrow.time64("us"), pyarrow.duration("s"), pyarrow.float16()]
    for mode in ("RGB", "P", "L", "RGBA"):
        values["image " + mode] = Image.new(mode, (4, 3))
    for kind in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM"):
        buffer = io.BytesIO()
        Image.new("RGB", (2, 2)).save(buffer, kind)
        buffer.seek(0)
        values["opened " + kind] = Image.open(buffer)
    values["stdlib"] = [collections.ChainMap, type(None), type(...), Ellipsis, NotImplemented, slice(1, 2),
                        uuid.UUID(int=3), Path("/a"), fractions.Fraction(-7, 3), dt.timezone.utc]
    return values


class _RecordingUnpickler(pickle._Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        self.named.add((module, name))
        return super().find_class(module, name)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_real_values_name_only_allowed_globals_and_round_trip_untrusted(protocol: int) -> None:
    # The discovery that made the allow-list: pickle real values of every supported kind, record the globals their
    # pickles name, and load them untrusted. What pickle.loads rebuilds pickles to the same bytes as what the
    # untrusted load rebuilds.
    refused = {}
    for kind, value in _library_values().items():
        if kind == "stdlib":
            value = value[1:]  # ChainMap: a class pickles by reference, and ChainMap is not on the list
        data = pickle.dumps(value, protocol=protocol)
        recorder = _RecordingUnpickler(io.BytesIO(data))
        recorder.named = set()
        expected = recorder.load()
        outside = {name for name in recorder.named if not unpickle.allowed(*name)}
        loaded = loads(data, trusted=False)
        if kind.startswith("opened "):  # an opened image pickles its pixels, not its file: compare those
            expected, loaded = expected.tobytes(), loaded.tobytes()
        elif kind == "stdlib":  # a concrete path loads as its pure path
            assert type(loaded[6]).__name__ == "PurePosixPath" and str(loaded[6]) == "/a"
            expected, loaded = expected[:6] + expected[7:], loaded[:6] + loaded[7:]
        if outside or pickle.dumps(loaded, protocol=4) != pickle.dumps(expected, protocol=4):
            refused[kind] = outside or "loads differently"
    assert refused == {}


def test_chainmap_class_is_not_on_the_list() -> None:
    assert issubclass(loads(pickle.dumps(collections.ChainMap, protocol=4), trusted=False), UntrustedObject)
    assert not unpickle.allowed("collections", "ChainMap")
