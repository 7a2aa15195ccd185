"""How an untrusted pickle may call an allowed global (the guards `allowlist._ALLOWED` gives REDUCE and NEWOBJ),
and the checks of the state BUILD sets and of the objects made, for what numpy's and pandas' compiled code trusts
without checking."""
from __future__ import annotations

import pickle
import re
import sys
from functools import lru_cache
from typing import Any, Callable

from .standins import UntrustedObject

# --- guards: how a data pickle calls an allowed global (REDUCE, NEWOBJ). `call(*args)` makes the object. ----------


def _refuse(call: Callable, why: str) -> pickle.UnpicklingError:
    name = getattr(call, "__qualname__", None) or type(call).__name__
    return pickle.UnpicklingError("untrusted pickle calls %s %s: refused" % (name, why))


def _NOT_CALLED(call: Callable, args: tuple) -> Any:
    """Named only as a reference (a defaultdict's factory, an array's class): data pickles never call it."""
    raise _refuse(call, "(data pickles only refer to it)")


def _materialised(call: Callable, args: tuple) -> Any:
    """Containers are rebuilt from lists the pickle holds, never from a lazy range or iterator it multiplies."""
    if any(isinstance(arg, range) or hasattr(arg, "__next__") for arg in args):
        raise _refuse(call, "with a range or iterator")
    return call(*args)


def _latin1(call: Callable, args: tuple) -> Any:
    """_codecs.encode(text, 'latin1'): protocol 2's bytes. Other codecs import modules and (de)compress."""
    if len(args) != 2 or not isinstance(args[0], str) or args[1] not in ("latin1", "latin-1"):
        raise _refuse(call, "with another codec than latin1")
    return call(*args)


def _byte_source(call: Callable, args: tuple) -> Any:
    """bytes(), bytearray(b'..'), bytearray('..', 'latin-1') as pickles write them; not bytearray(10**10)."""
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)) or not args:
        return call(*args)
    return _latin1(call, args)


_FRACTION_TEXT = re.compile(r"-?\d+(?:/\d+)?")


def _fraction_parts(call: Callable, args: tuple) -> Any:
    """Fraction(2, 3), or Fraction('2/3') as older Pythons pickle it; Fraction('1e10000000') computes a
    10-million-digit integer."""
    if not (all(type(arg) is int for arg in args) or (len(args) == 1 and isinstance(args[0], str)
                                                     and _FRACTION_TEXT.fullmatch(args[0]))):
        raise _refuse(call, "with anything but integers or 'n/d' text")
    return call(*args)


def _type_of_singleton(call: Callable, args: tuple) -> Any:
    """type(None), type(...), type(NotImplemented): how pickle saves those types; type(name, bases, ns) makes a
    class."""
    if len(args) != 1 or not any(args[0] is singleton for singleton in (None, Ellipsis, NotImplemented)):
        raise _refuse(call, "to make a type")
    return call(*args)


def _empty_shape_at(index: int) -> Callable:
    """numpy makes an array of `shape` uninitialised, then BUILD fills it: pickles always pass (0,), so that no
    array shows the daemon's memory."""

    def guard(call: Callable, args: tuple) -> Any:
        if len(args) <= index or tuple(args[index]) != (0,):
            raise _refuse(call, "with a non-empty shape (uninitialised memory)")
        return call(*args)

    return guard


def _is_numpy_random(value: Any) -> bool:
    cls = value if isinstance(value, type) else type(value)
    return cls.__module__.startswith("numpy.random.")


def _bit_generator_name(call: Callable, args: tuple) -> Any:
    """numpy.random's ctors instantiate the class (or look up the name) they are given, and call the ctor they are
    given: only numpy.random's own."""
    if args and not (isinstance(args[0], str) or _is_numpy_random(args[0])):
        raise _refuse(call, "with a %s" % type(args[0]).__name__)
    if len(args) > 1 and (getattr(args[1], "__module__", None), getattr(args[1], "__qualname__", None)) != (
        "numpy.random._pickle", "__bit_generator_ctor"):
        raise _refuse(call, "with another ctor than numpy's")
    return call(*args)


def _pandas_index_class(call: Callable, args: tuple) -> Any:
    """pandas' _new_*Index(cls, d) calls cls.__new__(cls, **d): cls must be a pandas Index class."""
    import pandas  # imported already: the function guarded lives in pandas

    if not args or not (isinstance(args[0], type) and issubclass(args[0], pandas.Index)):
        raise _refuse(call, "with another class than a pandas Index")
    return call(*args)


def _arrow_validated(call: Callable, args: tuple) -> Any:
    """pyarrow rebuilds arrays from pickled buffers without checking lengths and offsets against them: validate,
    or an array reads past its buffers."""
    result = call(*args)
    try:
        result.validate(full=True)
    except Exception as exc:
        raise pickle.UnpicklingError(
            "untrusted pickle holds an invalid Arrow %s: %s" % (type(result).__name__, exc)) from exc
    return result


def _pandas_blocks_in_frame(call: Callable, args: tuple) -> Any:
    """BlockManager(blocks, axes) as pandas 3 pickles it (pandas 2: no arguments, then BUILD), never with
    verify_integrity=False; pandas does not check that blocks lie within the frame (see `_check_block_locations`)."""
    if len(args) not in (0, 2):
        raise _refuse(call, "with other arguments than (blocks, axes)")
    if args:
        _check_block_locations([block.mgr_locs for block in args[0]], args[1])
    return call(*args)


def _no_arguments(call: Callable, args: tuple) -> Any:
    """Made by NEWOBJ without arguments, then BUILD (SingleBlockManager(block, axis) checks nothing)."""
    if args:
        raise _refuse(call, "with arguments")
    return call()


def _invalid(what: str) -> pickle.UnpicklingError:
    return pickle.UnpicklingError("untrusted pickle holds %s: refused" % what)


def _check_block_locations(locations: list, axes: Any) -> None:
    """pandas writes each block's item numbers into arrays as long as the frame's items without bounds checks
    (`_rebuild_blknos_and_blklocs`): a block placed outside writes outside them."""
    from pandas._libs.internals import BlockPlacement

    items = len(axes[0])
    for location in locations:
        placement = location if isinstance(location, BlockPlacement) else BlockPlacement(location)
        count = len(placement)
        if not count:
            continue
        numbers = placement.indexer  # a slice is not expanded: slice(0, 10**12) would be 8 TB
        if isinstance(numbers, slice):
            first = numbers.start or 0
            last = first + (count - 1) * (numbers.step or 1)
            low, high = min(first, last), max(first, last)
        else:
            low, high = numbers.min(), numbers.max()
        if count > items or low < 0 or high >= items:
            raise _invalid("a pandas block placed outside its frame")


def _check_manager_state(state: Any) -> None:
    """A block manager's pickled state (pandas 2, and pandas 3's SingleBlockManager), before pandas uses it."""
    try:
        state = state[3]["0.14.1"]
        locations = [block["mgr_locs"] for block in state["blocks"]]
        axes = state["axes"]
    except (TypeError, KeyError, IndexError):
        return  # pandas refuses it itself ("pre-0.14.1 pickles are no longer supported")
    _check_block_locations(locations, axes)


def _check_image_state(state: Any) -> None:
    """A PIL image's state is [info, mode, size, palette, pixels]: PIL allocates `size` before it reads the pixels,
    so a tiny pickle claiming 65535x65535 would take 16 GB. At least one bit of pixels per pixel, as mode "1" packs."""
    try:
        width, height = state[2]
        pixels = len(state[4])
    except (TypeError, ValueError, IndexError, KeyError):
        return  # PIL refuses it itself
    if not (isinstance(width, int) and isinstance(height, int)) or width * height > 8 * pixels:
        raise _invalid("a %r image with %d bytes of pixels" % (state[2], pixels))


@lru_cache(maxsize=None)
def _pandas_checked_classes() -> tuple:
    from pandas import Categorical, MultiIndex
    from pandas._libs.arrays import NDArrayBacked
    from pandas.arrays import DatetimeArray, PeriodArray, SparseArray, TimedeltaArray
    from pandas.core.internals.managers import BaseBlockManager, SingleBlockManager

    kinds = {DatetimeArray: "M", TimedeltaArray: "m", PeriodArray: "i"}
    return (NDArrayBacked, BaseBlockManager, MultiIndex, SparseArray), Categorical, kinds, SingleBlockManager


def _check_pandas_object(obj: Any) -> None:
    """The invariants pandas' compiled code relies on without checking, for objects pickles rebuild from state:
    a Categorical's codes index its categories, an NDArrayBacked array holds an ndarray of its kind, a manager's
    blocks match its axes, a MultiIndex's codes its levels."""
    checked, categorical, kinds, single_block_manager = _pandas_checked_classes()
    if not isinstance(obj, checked):
        return
    ndarray_backed, block_manager, multi_index, sparse_array = checked
    if isinstance(obj, ndarray_backed):
        import numpy

        values = obj._ndarray
        if not isinstance(values, numpy.ndarray):
            raise _invalid("a %s without its array" % type(obj).__name__)
        if isinstance(obj, categorical):
            categories = len(obj.dtype.categories)
            if values.dtype.kind not in "iu" or values.ndim != 1 or (
                values.size and (values.min() < -1 or values.max() >= categories)
            ):
                raise _invalid("a Categorical whose codes are not those of its categories")
        kind = next((kind for cls, kind in kinds.items() if isinstance(obj, cls)), None)
        if kind is not None and (values.dtype.kind != kind or values.dtype.itemsize != 8):
            raise _invalid("a %s of %s values" % (type(obj).__name__, values.dtype))
    elif isinstance(obj, block_manager):
        try:
            if isinstance(obj, single_block_manager):
                ok = len(obj.blocks) == 1 and len(obj.blocks[0].values) == len(obj.axes[0])
            else:
                obj._verify_integrity()
                ok = True
        except (AssertionError, ValueError, TypeError, AttributeError, IndexError):
            ok = False
        if not ok:
            raise _invalid("a pandas %s whose blocks do not match its axes" % type(obj).__name__)
    elif isinstance(obj, multi_index):
        try:
            obj._verify_integrity()
        except ValueError as exc:
            raise _invalid("a MultiIndex whose codes are not those of its levels (%s)" % exc) from None
    elif len(obj.sp_values) != obj.sp_index.npoints:  # a SparseArray
        raise _invalid("a SparseArray whose values do not match its index")


def _zone_key(call: Callable, args: tuple) -> Any:
    """ZoneInfo(key) and ZoneInfo._unpickle(key, ...) read the key's file in the system's time zone directories;
    for a key found nowhere there, zoneinfo imports importlib.resources and searches the tzdata package. With
    system time zone data present, such a key is refused (the check mirrors zoneinfo's: no path leaves TZPATH)."""
    import os
    import zoneinfo

    key = args[0] if args else None
    directories = [path for path in zoneinfo.TZPATH if os.path.isdir(path)]
    if isinstance(key, str) and directories:
        if os.path.isabs(key) or os.path.normpath(key) != key or key.startswith(".."):
            raise _refuse(call, "with a key outside the time zone directories")
        if not any(os.path.isfile(os.path.join(path, key)) for path in directories):
            raise _refuse(call, "with a key the system has no time zone for")
    return call(*args)


def _check_dtype(dtype: Any) -> None:
    """A dtype's pickled state is trusted by numpy (flags, field offsets): it must describe the dtype numpy builds
    from the same description, or an array of it reads pointers from bytes."""
    import numpy

    try:
        if dtype.names is not None:
            fields = [dtype.fields[name] for name in dtype.names]
            spec = {"names": list(dtype.names), "formats": [field[0] for field in fields],
                    "offsets": [field[1] for field in fields], "itemsize": dtype.itemsize,
                    "titles": [field[2] if len(field) > 2 else None for field in fields]}
            canonical = numpy.dtype(spec, align=dtype.isalignedstruct)
        elif dtype.subdtype is not None:
            canonical = numpy.dtype(dtype.subdtype)
        else:
            canonical = numpy.dtype(dtype.str)
        same = (canonical == dtype and canonical.flags == dtype.flags and canonical.itemsize == dtype.itemsize
                and canonical.alignment == dtype.alignment and canonical.hasobject == dtype.hasobject)
    except (TypeError, ValueError) as exc:
        raise pickle.UnpicklingError("untrusted pickle sets an invalid numpy dtype state: %s" % exc) from None
    if not same:
        raise pickle.UnpicklingError("untrusted pickle sets a numpy dtype state numpy would not build: refused")


def _complete_without_state(obj: Any) -> bool:
    """Whether an object made without its constructor (NEWOBJ) is whole without a BUILD: a bare object, immutable
    builtins (namedtuples), placeholders, pandas' masked dtypes (stateless). Others, numpy and pandas' compiled classes
    among them, keep NULL or None fields that their compiled code does not check until a BUILD sets them."""
    if type(obj) is object or isinstance(obj, (UntrustedObject, tuple, int, float, complex, str, bytes, frozenset)):
        return True
    dtypes = sys.modules.get("pandas.core.dtypes.dtypes")
    return dtypes is not None and isinstance(obj, getattr(dtypes, "BaseMaskedDtype", ()))


_STATE_POSITIONS = {"MT19937": ("state", "pos", 624), "Philox": (None, "buffer_pos", 4)}


def _check_bit_generator(obj: Any) -> None:
    """numpy's MT19937 and Philox take the position in their state buffer from the pickle, and read the buffer
    there when drawing."""
    bit_generator = getattr(obj, "bit_generator", None) or getattr(obj, "_bit_generator", obj)
    state = getattr(bit_generator, "state", None)
    if not isinstance(state, dict) or state.get("bit_generator") not in _STATE_POSITIONS:
        return
    part, key, size = _STATE_POSITIONS[state["bit_generator"]]
    position = (state[part] if part else state)[key]
    if not 0 <= position <= size:
        raise _invalid("a %s state positioned outside its buffer" % state["bit_generator"])


def _check_made(obj: Any) -> None:
    module = type(obj).__module__
    if module.startswith("pandas"):
        _check_pandas_object(obj)
    elif module.startswith("numpy.random"):
        _check_bit_generator(obj)
