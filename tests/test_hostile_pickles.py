"""A corpus of hostile pickles against `loads(..., trusted=False)`: each must run no code, import no module that
was not imported before, open/map/write no file, and neither crash the process nor show memory outside its data.
Checked from outside our code: a fresh Python process loads every pickle under `sys.addaudithook` (open, os.*,
subprocess, exec, compile, import, ctypes, mmap, marshal...), payloads that would run touch a marker file, and
each value is shown afterwards. The corpus: hand-written attacks, the globals on picklescan's and fickling's deny
lists, pickles made only of allowed globals whose state numpy's or pandas' compiled code trusts (each shown to
crash a plain pickle.loads), hypothesis-generated programs, and a mount of a real run holding such artifacts."""
from __future__ import annotations

import copyreg
import errno
import json
import os
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy
import pytest

from tests.test_unpickle import Op, _Reduces, _text, global_, program

ROOT = Path(__file__).resolve().parents[1]

# Run in the child: preload what data pickles may import, then load each case while recording audit events.
_CHILD = r"""
import io, json, pickle, sys, copyreg, warnings
warnings.simplefilter("ignore")  # showing a warning reads source lines (linecache): Python's, not the pickle's
sys.path.insert(0, sys.argv[1])
from client import unpickle
import numpy, pandas, pyarrow, PIL.Image, zoneinfo, datetime, decimal, fractions, uuid, pathlib
import numpy.random, numpy.ma, pandas.arrays
copyreg.add_extension("os", "system", 240)
cases = pickle.load(open(sys.argv[2], "rb"))
# warm up the lazy imports of legitimate loads, so that what remains is the pickle's doing
unpickle.loads(pickle.dumps([pandas.DataFrame({"a": [1]}), numpy.zeros(2), pyarrow.array([1])]), trusted=False)
WATCHED = ("open", "os.", "subprocess.", "exec", "compile", "import", "ctypes.", "mmap.", "marshal.", "shutil.",
           "socket.", "urllib.", "code.__new__", "function.__new__", "builtins.input", "sys.setprofile",
           "sys.settrace", "shelve.", "glob.", "tempfile.")
TZ_FILES = tuple(zoneinfo.TZPATH)  # ZoneInfo(key) reads the system's time zone files (keys cannot leave them)
recording = []
def hook(event, args):
    if recording and event.startswith(WATCHED) and not recording[0].get("off"):
        if event == "open" and isinstance(args[0], str) and args[0].startswith(TZ_FILES):
            return
        recording[0]["events"].append("%s %r" % (event, args)[:200])
sys.addaudithook(hook)
for name, data in cases:
    before = set(sys.modules)
    entry = {"case": name, "events": []}
    recording[:] = [entry]
    try:
        value = unpickle.loads(data, trusted=False)
        entry["outcome"] = "loaded " + type(value).__name__
    except Exception as exc:
        value = None
        entry["outcome"] = "refused %s: %s" % (type(exc).__name__, str(exc)[:200])
    entry["off"] = True
    recording[:] = []
    entry["new_modules"] = sorted(set(sys.modules) - before)
    print(json.dumps(entry), flush=True)
    try:  # what the mount does next: a repr (a crash here is the case's)
        entry = {"case": name, "repr": repr(value)[:2000]}
    except Exception as exc:
        entry = {"case": name, "repr": "repr failed: %s" % type(exc).__name__}
    print(json.dumps(entry), flush=True)
"""


def run_cases(cases: List[tuple], tmp_path: Path) -> Dict[str, dict]:
    """Load every (name, pickle) in one fresh process; returns per case what it saw. A crash fails the test."""
    cases_file = tmp_path / "cases.pickle"
    cases_file.write_bytes(pickle.dumps(cases))
    done = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT), str(cases_file)], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    results: Dict[str, dict] = {}
    for line in done.stdout.splitlines():
        entry = json.loads(line)
        results.setdefault(entry["case"], {}).update(entry)
    if done.returncode != 0:
        last = list(results)[-1] if results else None
        pytest.fail("the loading process died (rc %s) at or after case %r: %s"
                    % (done.returncode, last, done.stderr[-2000:]))
    assert [name for name, _ in cases] == list(results)
    return results


def assert_harmless(results: Dict[str, dict], marker: Path, secret: bytes = b"") -> None:
    bad = {name: {key: entry[key] for key in ("events", "new_modules", "outcome") if entry.get(key)}
           for name, entry in results.items()
           if entry["events"] or entry["new_modules"] or (secret and secret in entry.get("repr", "").encode())}
    assert bad == {}
    assert not marker.exists(), "a payload ran"


def call(module: str, name: str, *args) -> bytes:
    return program(global_(module, name)(*args))


def _build(target: Op, state: bytes) -> bytes:
    return program(Op(target.code + state + b"b"))  # BUILD


def _corpus(marker: Path, tmp: Path) -> List[tuple]:
    secret = tmp / "secret"
    created = tmp / "created"
    victim = tmp / "victim"
    sh = "touch %s" % marker
    code = "open(%r, 'w').close()" % str(marker)
    evil = pickle.dumps(_Reduces(os.system, sh))
    evil_py = tmp / "evil.py"
    evil_py.write_text(code)
    evil_npy = tmp / "evil.npy"
    numpy.save(evil_npy, numpy.array([_Reduces(os.system, sh)], dtype=object), allow_pickle=True)
    os_module = global_("builtins", "__import__")("os")
    memmap = global_("numpy", "memmap")
    ndarray = global_("numpy", "ndarray")
    reconstruct = global_("numpy._core.multiarray", "_reconstruct")
    cases = [
        ("os.system", call("os", "system", sh)), ("posix.system", call("posix", "system", sh)),
        ("nt.system", call("nt", "system", sh)), ("os.popen", call("os", "popen", sh)),
        ("os.execv", call("os", "execv", "/bin/sh", ["sh", "-c", sh])),
        ("posix.posix_spawn", call("posix", "posix_spawn", "/bin/sh", ["sh", "-c", sh], Op(b"}"))),
        ("os.spawnv", call("os", "spawnv", 0, "/bin/sh", ["sh", "-c", sh])),
        ("subprocess.Popen", call("subprocess", "Popen", ["sh", "-c", sh])),
        ("subprocess.run", call("subprocess", "run", ["sh", "-c", sh])),
        ("subprocess.check_output", call("subprocess", "check_output", ["sh", "-c", sh])),
        ("eval", call("builtins", "eval", code)), ("exec", call("builtins", "exec", code)),
        ("compile", call("builtins", "compile", code, "x", "exec")),
        ("open secret", call("builtins", "open", str(secret))),
        ("open create", call("builtins", "open", str(created), "w")),
        ("__import__", call("builtins", "__import__", "antigravity")),
        ("breakpoint", call("builtins", "breakpoint")),
        ("getattr(__import__('os'), 'system')", program(global_("builtins", "getattr")(os_module, "system")(sh))),
        ("getattr of an allowed class", program(global_("builtins", "getattr")(global_("pandas", "DataFrame"),
                                                                               "to_csv")(str(created)))),
        ("getattr enum dunder", program(global_("builtins", "getattr")(global_("uuid", "SafeUUID"),
                                                                       "__init_subclass__")())),
        ("getattr ZoneInfo.from_file", program(global_("builtins", "getattr")(global_("zoneinfo", "ZoneInfo"),
                                                                              "from_file")(str(secret)))),
        ("ZoneInfo of a key with no zone (tzdata import)", call("zoneinfo", "ZoneInfo", "No/Such_Zone")),
        ("ZoneInfo key leaving the zone files", call("zoneinfo", "ZoneInfo", "../../../etc/passwd")),
        ("ZoneInfo._unpickle of a key with no zone", program(global_("builtins", "getattr")(
            global_("zoneinfo", "ZoneInfo"), "_unpickle")("No/Such_Zone", 1))),
        ("importlib.import_module", call("importlib", "import_module", "antigravity")),
        ("runpy.run_path", call("runpy", "run_path", str(evil_py))),
        ("runpy.run_module", call("runpy", "run_module", "antigravity")),
        ("operator.methodcaller", program(global_("operator", "methodcaller")("system", sh)(os_module))),
        ("operator.attrgetter", program(global_("operator", "attrgetter")("system")(os_module)(sh))),
        ("operator.itemgetter", program(global_("operator", "itemgetter")("x")(global_("os", "environ")))),
        ("functools.partial", program(global_("functools", "partial")(global_("os", "system"), sh)())),
        ("functools.reduce", program(global_("functools", "reduce")(global_("builtins", "exec"), [code]))),
        ("copyreg._reconstructor", program(global_("copyreg", "_reconstructor")(memmap, memmap, str(created)))),
        ("copyreg extension registry", b"\x80\x02\x82\xf0(" + _text(sh) + b"tR."),
        ("codecs.open", call("codecs", "open", str(secret))), ("io.open", call("io", "open", str(secret))),
        ("_io.open", call("_io", "open", str(created), "w")), ("_io.FileIO", call("_io", "FileIO", str(secret))),
        ("io.FileIO write", call("io", "FileIO", str(victim), "w")),
        ("pathlib read_text", program(global_("builtins", "getattr")(global_("pathlib", "Path")(str(secret)),
                                                                     "read_text")())),
        ("pathlib dotted write_bytes", program(global_("pathlib", "Path.write_bytes")(
            global_("pathlib", "Path")(str(victim)), "x"))),
        ("ctypes.CDLL", call("ctypes", "CDLL", None)), ("ctypes.string_at", call("ctypes", "string_at", 8, 8)),
        ("mmap.mmap", call("mmap", "mmap", -1, 4096)),
        ("numpy.memmap w+", program(memmap(str(created), "uint8", "w+", 0, [16]))),
        ("numpy.memmap r+ truncates", program(memmap(str(victim), "uint8", "r+", 0, [0]))),
        ("numpy.memmap read secret", program(memmap(str(secret), "uint8", "r"))),
        ("numpy.core.memmap", call("numpy._core.memmap", "memmap", str(secret), "uint8", "r")),
        ("memmap via _reconstruct", program(reconstruct(memmap, [0], "b"))),
        ("memmap via NEWOBJ", program(Op(memmap.code + _operand_tuple(str(secret)) + b"\x81"))),
        ("numpy.load", call("numpy", "load", str(evil_npy), None, True)),
        ("numpy.fromfile", call("numpy", "fromfile", str(secret), "uint8")),
        ("numpy.loadtxt", call("numpy", "loadtxt", str(secret))),
        ("numpy.save", call("numpy", "save", str(created), [1])),
        ("numpy object array of os.system", pickle.dumps(numpy.array([_Reduces(os.system, sh)], dtype=object))),
        ("numpy f2py main", call("numpy.f2py.__main__", "main")),
        ("numpy testing runstring", call("numpy.testing._private.utils", "runstring", code, Op(b"}"))),
        ("pandas.read_pickle", call("pandas", "read_pickle", str(tmp / "evil.pkl"))),
        ("pandas.read_csv", call("pandas", "read_csv", str(secret))),
        ("pandas.io.pickle.read_pickle", call("pandas.io.pickle", "read_pickle", str(tmp / "evil.pkl"))),
        ("pandas.eval", call("pandas", "eval", "__import__('os').system(%r)" % sh)),
        ("pandas computation eval", call("pandas.core.computation.eval", "eval", "1+1")),
        ("pandas dotted DataFrame.to_pickle", call("pandas", "DataFrame.to_pickle")),
        ("pickle.loads", call("pickle", "loads", _bytes(evil))),
        ("_pickle.loads", call("_pickle", "loads", _bytes(evil))),
        ("marshal.loads", call("marshal", "loads", _bytes(b"\xe3"))),
        ("shelve.open", call("shelve", "open", str(created))),
        ("types.FunctionType", call("types", "FunctionType", None, Op(b"}"))),
        ("types.CodeType", call("types", "CodeType", 0, 0)),
        ("sys.modules", program(global_("builtins", "getattr")(global_("sys", "modules"), "get")("os"))),
        ("BUILD __class__ of an allowed object", _build(global_("dateutil.relativedelta", "relativedelta")(),
                                                         b"}" + _text("__class__") + memmap.code + b"s")),
        ("BUILD __reduce_ex__", _build(global_("dateutil.relativedelta", "relativedelta")(),
                                       b"}" + _text("__reduce_ex__") + global_("os", "system").code + b"s")),
        ("BUILD shadows a method", _build(global_("dateutil.relativedelta", "relativedelta")(),
                                          b"}" + _text("normalized") + global_("builtins", "bytearray").code + b"s")),
        ("BUILD a named class", _build(global_("pandas", "Index"), b"N}" + _text("__repr__")
                                       + global_("os", "getcwd").code + b"s\x86")),
        ("dotted name out of an allowed class", call("pandas.core.frame",
                                                     "DataFrame.__init__.__builtins__.get", "exec")),
        ("INST of an allowed class", b"(S'ab'\nibuiltins\nbytearray\n."),
        ("bytearray(10**10)", call("builtins", "bytearray", Op(b"\x8a\x05" + (10**10).to_bytes(5, "little")))),
        ("list(range(10**9))", program(global_("builtins", "list")(global_("builtins", "range")(10**9)))),
        ("Fraction('1e10000000')", call("fractions", "Fraction", "1e10000000")),
        ("codecs other than latin1", call("_codecs", "encode", "x", "bz2_codec")),
        ("bytearray of another codec", call("builtins", "bytearray", "x", "utf_16")),
        ("type() makes a class", program(global_("builtins", "type")("X", Op(b"(t"), Op(b"}")))),
        ("ndarray of uninitialised memory", program(reconstruct(ndarray, [4096], "b"))),
        ("ndarray called", program(ndarray([4096]))),
        ("ndarray via NEWOBJ", program(Op(ndarray.code + _operand_tuple([4096]) + b"\x81"))),
        ("_new_Index with ndarray", program(global_("pandas.core.indexes.base", "_new_Index")(
            ndarray, Op(b"}" + _text("shape") + b"(J\x00\x10\x00\x00t" + b"s")))),
        ("bit generator ctor of a memmap", program(global_("numpy.random._pickle", "__bit_generator_ctor")(memmap))),
        ("generator ctor calling bytearray", program(global_("numpy.random._pickle", "__generator_ctor")(
            10**9, global_("builtins", "bytearray")))),
        ("numpy dtype with forged flags", _forged_dtype_flags()),
        ("numpy dtype with overlapping object field", _overlapping_object_dtype()),
        ("arrow array longer than its buffers", _long_arrow_array()),
        ("re-BUILD an array a pandas block checked", _rebuilt_after_use()),
        ("APPENDS to a named class", program(Op(global_("collections", "deque").code + b"(K\x01e"))),
        ("pandas block over 10**12 items (checked without expanding)", _huge_block_state()),
        ("PIL image of 65535x65535 pixels from 3 bytes", _huge_image_state()),
    ] + [(name, pickle.dumps(payload, protocol=4)) for name, payload in _state_payloads().items()]
    return cases


def _bytes(data: bytes) -> Op:
    return Op(b"B" + struct.pack("<I", len(data)) + data)  # BINBYTES


def _operand_tuple(*items) -> bytes:
    from tests.test_unpickle import _operand

    return b"(" + b"".join(_operand(item) for item in items) + b"t"


class _ReducesWithState:
    """Pickles as `func(*args)` followed by BUILD with `state`."""

    def __init__(self, func, args: tuple, state) -> None:
        self.reduced = (func, args, state)

    def __reduce__(self) -> tuple:
        return self.reduced


def _dtype_read_from_bytes(base: str, state: tuple) -> bytes:
    # numpy's own pickle of an array from a buffer (_frombuffer), of a dtype whose state the pickle forges
    dtype = _ReducesWithState(numpy.dtype, (base, False, True), state)
    return pickle.dumps(_Reduces(numpy._core.numeric._frombuffer, b"A" * 8, dtype, (1,), "C"), protocol=4)


def _forged_dtype_flags() -> bytes:
    # an object dtype without its "holds objects" flags: the array's element is the pointer 0x4141414141414141
    return _dtype_read_from_bytes("O8", (3, "|", None, None, None, -1, -1, 0))


def _overlapping_object_dtype() -> bytes:
    # numpy refuses to build such a dtype; its state can describe one: a pointer field over a bytes field
    fields = {"a": (numpy.dtype("O"), 0), "b": (numpy.dtype("V8"), 0)}
    return _dtype_read_from_bytes("V8", (3, "|", None, ("a", "b"), fields, 8, 8, numpy.dtype([("a", "O")]).flags))


def _rebuilt_after_use() -> bytes:
    # An empty array goes into a pandas block, which checks its shape; then BUILD makes it 1000 rows.
    array = global_("numpy._core.multiarray", "_reconstruct")(global_("numpy", "ndarray"), [0], "b")
    state = pickle.dumps((1, (2, 1000), numpy.dtype("i8"), False, b"\0" * 16000), protocol=4)[2:-1]
    block = global_("pandas._libs.internals", "_unpickle_block")(Op(b"h\x00"), global_("builtins", "slice")(0, 0),
                                                                2)
    return b"\x80\x04" + array.code + b"\x94" + block.code + b"0" + b"h\x00" + state + b"b."


def _long_arrow_array() -> bytes:
    import pyarrow

    data = pickle.dumps(pyarrow.array([1, 2], type=pyarrow.int64()), protocol=4)
    # ArrayData's length is pickled as a small int: claim 100000 elements over a 16-byte buffer
    return data.replace(b"K\x02", b"J\xa0\x86\x01\x00", 1)


class _MadeWithoutConstructor(_ReducesWithState):
    """Pickles as NEWOBJ of `cls` (pickle checks that the object is of that class), then BUILD with `state`."""

    def __init__(self, cls: type, state) -> None:
        super().__init__(copyreg.__newobj__, (cls,), state)

    @property
    def __class__(self):  # what pickle's __newobj__ check reads
        return self.reduced[1][0]


# Objects whose pickled state numpy's or pandas' compiled code trusts: each of these crashes the process that loads
# and shows it, or draws from it (checked by test_state_payloads_are_real).
_FAR = slice(0, 4_000_000_000, 2_000_000_000)  # block items 0 and 2e9 of a two-column frame


def _frame(manager) -> object:
    import pandas

    return _MadeWithoutConstructor(pandas.DataFrame, {"_mgr": manager, "_typ": "dataframe", "_metadata": [],
                                                      "attrs": {}, "_flags": {"allows_duplicate_labels": True}})


def _state_payloads() -> dict:
    import pandas
    from pandas._libs.internals import _unpickle_block
    from pandas.core.internals.managers import BlockManager

    values = numpy.arange(4).reshape(2, 2)
    axes = [pandas.Index(["a", "b"]), pandas.RangeIndex(2)]
    block = _Reduces(_unpickle_block, values, _FAR, 2)
    manager_state = (axes, [values], [axes[0]], {"0.14.1": {"axes": axes,
                                                            "blocks": [{"values": values, "mgr_locs": _FAR}]}})
    categorical = pandas.Categorical([10, 20])
    func, args, state = categorical.__reduce_ex__(4)
    dates = pandas.array(pandas.date_range("2024", periods=2))
    dates_func, dates_args, _ = dates.__reduce_ex__(4)
    multi = pandas.MultiIndex.from_tuples([(1, "a")])
    multi_func, (multi_cls, multi_state), *_ = multi.__reduce__()
    forged_codes = dict(multi_state, codes=[numpy.array([0, 1_000_000], dtype="int32")] * 2)
    return {
        "pandas block outside its frame (BlockManager(blocks, axes))": _frame(_Reduces(BlockManager, (block,), axes)),
        "pandas block outside its frame (pandas 2 state)": _frame(_MadeWithoutConstructor(BlockManager,
                                                                                          manager_state)),
        "pandas BlockManager(..., verify_integrity=False)": _frame(_Reduces(BlockManager, (block,), axes, False)),
        "Categorical codes outside its categories": _ReducesWithState(
            func, args, (state[0], numpy.array([0, 10**9], dtype="int32"))),
        "DatetimeArray left without state": _Reduces(dates_func, *dates_args),
        "DatetimeArray made by NEWOBJ, no state": _MadeWithoutConstructor(type(dates), None),
        "DatetimeArray state without an array": _ReducesWithState(dates_func, dates_args, (None, dates.dtype)),
        "MultiIndex codes outside its levels": _Reduces(multi_func, multi_cls, forged_codes),
        "MT19937 state positioned outside its key": _forged_generator_state(),
    }


def _huge_image_state() -> bytes:
    from PIL import Image

    return pickle.dumps(_MadeWithoutConstructor(Image.Image, [{}, "RGBA", (65535, 65535), None, b"abc"]), protocol=4)


def _huge_block_state() -> bytes:
    import pandas
    from pandas.core.internals.managers import BlockManager

    values = numpy.arange(4).reshape(2, 2)
    axes = [pandas.Index(["a", "b"]), pandas.RangeIndex(2)]
    blocks = [{"values": values, "mgr_locs": slice(0, 10**12)}]
    state = (axes, [values], [axes[0]], {"0.14.1": {"axes": axes, "blocks": blocks}})
    return pickle.dumps(_frame(_MadeWithoutConstructor(BlockManager, state)), protocol=4)


def _forged_generator_state() -> object:
    generator = numpy.random.Generator(numpy.random.MT19937(0))
    bit_generator = generator.bit_generator
    func, args, state = bit_generator.__reduce__()
    state = (dict(state[0], state=dict(state[0]["state"], pos=10**9)),) + tuple(state[1:])
    return _Reduces(generator.__reduce__()[0], _ReducesWithState(func, args, state))


def test_hostile_pickles_run_nothing_import_nothing_and_touch_no_file(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    secret_text = b"ROOT-ONLY-SECRET-4242"
    (tmp_path / "secret").write_bytes(secret_text)
    os.chmod(tmp_path / "secret", 0o600)
    (tmp_path / "victim").write_bytes(b"keep me")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Reduces(os.system, "touch %s" % marker)))
    results = run_cases(_corpus(marker, tmp_path), tmp_path)
    assert_harmless(results, marker, secret_text)
    assert not (tmp_path / "created").exists()
    assert (tmp_path / "victim").read_bytes() == b"keep me"
    # made only of allowed globals, so refused by the checks on how they are called and built
    must_refuse = [
        "numpy dtype with forged flags", "numpy dtype with overlapping object field",
        "ndarray of uninitialised memory", "ndarray called", "ndarray via NEWOBJ", "bytearray(10**10)",
        "list(range(10**9))", "Fraction('1e10000000')", "codecs other than latin1", "bytearray of another codec",
        "type() makes a class", "_new_Index with ndarray", "BUILD __class__ of an allowed object",
        "BUILD __reduce_ex__", "BUILD shadows a method", "BUILD a named class", "INST of an allowed class",
        "arrow array longer than its buffers", "re-BUILD an array a pandas block checked", "APPENDS to a named class",
        "bit generator ctor of a memmap", "generator ctor calling bytearray",
        "ZoneInfo of a key with no zone (tzdata import)", "ZoneInfo key leaving the zone files",
        "ZoneInfo._unpickle of a key with no zone", "pandas block over 10**12 items (checked without expanding)",
        "PIL image of 65535x65535 pixels from 3 bytes",
    ] + list(_state_payloads())
    assert {name: results[name]["outcome"] for name in must_refuse
            if not results[name]["outcome"].startswith("refused")} == {}


def _deny_listed_globals() -> List[tuple]:
    """The globals picklescan and fickling flag as dangerous (their lists, read from the installed tools)."""
    import fickling.analysis as analysis
    import fickling.fickle as fickle
    import picklescan.scanner as picklescan

    names = set()
    for module, members in picklescan._unsafe_globals.items():
        for name in (["system", "load"] if members == "*" else members):
            names.add((module, name))
    for module in fickle.UNSAFE_IMPORTS:
        names.add((module, "system"))
    for holder in vars(analysis).values():
        for attribute in ("UNSAFE_IMPORTS", "UNSAFE_MODULES"):
            table = getattr(holder, attribute, None) if isinstance(holder, type) else None
            for module, members in (table or {}).items():
                for name in (members if isinstance(members, dict) else ["system"]):
                    names.add((module, name))
    return sorted(names)


def test_globals_on_picklescan_and_fickling_deny_lists_load_as_placeholders(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    cases = [("%s.%s" % name, call(name[0], name[1], "touch %s" % marker)) for name in _deny_listed_globals()]
    assert len(cases) > 100
    results = run_cases(cases, tmp_path)
    assert_harmless(results, marker)
    from client.unpickle import allowed

    refused_outright = {"%s.%s" % name for name in _deny_listed_globals() if allowed(*name)}
    assert refused_outright <= {"builtins.getattr", "__builtin__.getattr"}  # getattr(x) fails: one argument
    assert {name for name, entry in results.items()
            if name not in refused_outright and not entry["outcome"].startswith("loaded")} == set()


# --- generated opcode streams ------------------------------------------------------------------------------------

_FUZZ_GLOBALS = [
    ("os", "system"), ("builtins", "eval"), ("builtins", "getattr"), ("builtins", "__import__"),
    ("subprocess", "Popen"), ("numpy", "memmap"), ("numpy", "load"), ("pandas", "read_pickle"), ("io", "open"),
    ("operator", "attrgetter"), ("functools", "partial"), ("copyreg", "_reconstructor"), ("pickle", "loads"),
    ("builtins", "list"), ("builtins", "set"), ("builtins", "bytearray"), ("builtins", "type"), ("builtins", "range"),
    ("collections", "OrderedDict"), ("collections", "defaultdict"), ("datetime", "date"), ("fractions", "Fraction"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy._core.numeric", "_frombuffer"), ("pandas", "DataFrame"),
    ("pandas", "Index"), ("pandas.core.indexes.base", "_new_Index"), ("pyarrow.lib", "_restore_array"),
    ("pyarrow.lib", "py_buffer"), ("PIL.Image", "Image"), ("zoneinfo", "ZoneInfo"), ("uuid", "SafeUUID"),
    ("numpy.random._pickle", "__generator_ctor"), ("pathlib", "Path"), ("numpy.ma.core", "MaskedConstant"),
    ("pandas._libs.internals", "_unpickle_block"), ("pandas.core.internals.managers", "BlockManager"),
]


def _fuzz_streams():
    """Pickle programs: trees of calls (REDUCE, NEWOBJ), BUILDs, containers and memo reuse over dangerous and
    allowed globals and a few operands (a file name `x` in the loader's working directory among them), with raw
    opcodes mixed in."""
    from hypothesis import strategies as st

    leaf = st.one_of(
        st.integers(0, 3).map(lambda n: b"K" + bytes([n])),  # BININT1
        st.sampled_from(["x", "w+", "r", "uint8", "O8", "b", "system", "__class__", "_unpickle"]).map(_text),
        st.sampled_from([b"N", b"C\x08AAAAAAAA", b")", b"]", b"}", b"\x88"]),
        st.sampled_from(_FUZZ_GLOBALS).map(lambda name: _text(name[0]) + _text(name[1]) + b"\x93"),
        st.integers(0, 3).map(lambda n: b"h" + bytes([n])),  # BINGET: an object kept earlier (or an error)
    )

    def compound(child):
        children = st.lists(child, max_size=4).map(b"".join)
        return st.one_of(
            st.tuples(child, children).map(lambda c: c[0] + b"(" + c[1] + b"tR"),  # call
            st.tuples(child, children).map(lambda c: c[0] + b"(" + c[1] + b"t\x81"),  # NEWOBJ
            st.tuples(child, child).map(lambda c: c[0] + c[1] + b"b"),  # BUILD
            children.map(lambda items: b"](" + items + b"e"),  # list
            st.lists(st.tuples(child, child), max_size=3).map(
                lambda pairs: b"}(" + b"".join(k + v for k, v in pairs) + b"u"),  # dict
            st.tuples(child, st.integers(0, 3)).map(lambda c: c[0] + b"q" + bytes([c[1]])),  # BINPUT: keep it
            st.tuples(child, st.sampled_from([b"0", b"\x94", b"\x85", b"a", b"s", b"\x90", b"2"])).map(b"".join),
        )

    return st.recursive(leaf, compound, max_leaves=12).map(lambda program: b"\x80\x04" + program + b".")


def test_generated_pickle_streams_run_nothing_import_nothing_and_touch_no_file(tmp_path: Path) -> None:
    # hypothesis generates the programs; one process loads them all (a process per example would take minutes),
    # so a failure names its programs rather than a shrunk one.
    import hypothesis

    streams: List[bytes] = []

    @hypothesis.settings(max_examples=600, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(_fuzz_streams())
    def generate(stream: bytes) -> None:
        streams.append(stream)

    generate()
    marker = tmp_path / "MARKER"
    results = run_cases([("program %d: %r" % (index, data), data) for index, data in enumerate(streams)], tmp_path)
    assert_harmless(results, marker)
    assert not (tmp_path / "x").exists()


_TRUSTED_CHILD = r"""
import pickle, sys
value = pickle.loads(open(sys.argv[1], "rb").read())
print(repr(value), flush=True)
print(value.bit_generator.random_raw(2) if hasattr(value, "bit_generator") else "", flush=True)  # a draw
"""


@pytest.mark.parametrize("name", list(_state_payloads()))
def test_state_payloads_are_real(tmp_path: Path, name: str) -> None:
    # Loaded by pickle itself, then shown: the process crashes or shows memory from outside the data. So the
    # untrusted loader refusing them above is what keeps them out.
    path = tmp_path / "payload.pickle"
    path.write_bytes(pickle.dumps(_state_payloads()[name], protocol=4))
    done = subprocess.run([sys.executable, "-c", _TRUSTED_CHILD, str(path)], capture_output=True, text=True,
                          timeout=120)
    # dies, or shows numbers the payload does not hold: memory from outside its arrays
    assert done.returncode != 0 or re.search(r"-?\d{12,}", done.stdout), done.stdout


# --- through the mount -------------------------------------------------------------------------------------------


@pytest.mark.fuse
def test_mount_serves_hostile_artifacts_as_refusals_and_keeps_serving(client_env, manifest, tmp_path: Path) -> None:
    # A real TypesFlow run whose artifacts a hostile writer replaced: code, a memory map of a root-only file,
    # pickles that crash whoever loads them, a BUILD of a shared object. A crawl of the mount (ls -lR, grep -r,
    # cat of every file) runs none of it, shows no byte of the secret, and the daemon keeps serving the rest.
    from tests.support.hostile import copy_flows, crawl, replace_artifact, task_dir
    from tests.support.mount import mounted

    marker = tmp_path / "MARKER"
    secret = tmp_path / "secret"
    secret.write_bytes(b"ROOT-ONLY-SECRET-4242")
    os.chmod(secret, 0o600)
    flow, run_id = manifest["runs"]["types"]["pathspec"].split("/")
    root = copy_flows(client_env, tmp_path / "hostile", [flow])
    task = task_dir(root, flow, run_id, "start")
    hostile = [
        pickle.dumps(_Reduces(os.system, "touch %s" % marker), protocol=4),
        call("numpy", "memmap", str(secret), "uint8", "r"),
        _forged_dtype_flags(),
        program(Op(global_("numpy.ma.core", "MaskedConstant")().code + pickle.dumps(
            (1, (3,), numpy.dtype("f8"), False, bytes(24), bytes(3), 0.0), protocol=4)[2:-1] + b"b")),
    ] + [pickle.dumps(payload, protocol=4) for payload in _state_payloads().values()]
    # the run's own artifacts, now holding those pickles (frame, array, series and image stay as they were)
    names = ["nested", "nonstr_keys", "tup", "a_set", "a_frozenset", "when", "when_utc", "day", "duration", "price",
             "text", "raw", "int_value", "float_value", "bool_value", "none_value", "special_floats", "point"]
    payloads = dict(zip(names, hostile))
    assert len(payloads) == len(hostile)
    for name, payload in payloads.items():
        replace_artifact(root, task, name, payload)
    with mounted(tmp_path / "mnt", "--datastore-root", str(root), "--all-namespaces") as mount:
        report = crawl(mount.path)
        assert mount.process.poll() is None  # still serving
        artifacts = mount.path / flow / run_id / "start" / task.name
        for name in payloads:
            try:
                shown = (artifacts / name / "repr.txt").read_text()
            except OSError as exc:
                assert exc.errno == errno.EIO, name
            else:
                assert "untrusted" in shown, (name, shown)
        assert (artifacts / "frame" / "value.csv").read_text().startswith("n,s,f\n")  # a RangeIndex is left out
        assert (artifacts / "array" / "repr.txt").read_text().startswith("array(")
        assert mount.process.poll() is None
    assert b"ROOT-ONLY-SECRET" not in report.all_bytes()
    assert not marker.exists()
