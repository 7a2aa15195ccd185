"""The unpicklers and `load`/`loads`: trusted, the C unpickler; untrusted, the C unpickler while a pickle names no
global, else pickle's pure-Python one with every opcode that calls, builds or fills checked (see client.unpickle)."""
from __future__ import annotations

import enum
import io
import pickle
import sys
import types
from typing import Any, Callable, Dict, Optional, Tuple

from ..pickled_classes import CLIENT_CLASSES, METAFLOW_CLIENT_MODULE
from .allowlist import _ALLOWED, _RESOLVED_AS, _python3_name
from .guards import (
    _check_dtype,
    _check_image_state,
    _check_made,
    _check_manager_state,
    _complete_without_state,
    _zone_key,
)
from .standins import METAFLOW_STANDINS, UntrustedObject


def _restricted_getattr(obj: Any, name: str) -> Any:
    """builtins.getattr for untrusted pickles: only what pickles of data types use it for, on allowed classes:
    an enum member (`getattr(Color, 'RED')`) or ZoneInfo's unpickling classmethod."""
    if isinstance(obj, type) and issubclass(obj, enum.Enum) and name in obj.__members__:
        return obj[name]
    import zoneinfo  # here, not at import time: most processes never unpickle an untrusted tz-aware value

    if obj is zoneinfo.ZoneInfo and name == "_unpickle":
        return zoneinfo.ZoneInfo._unpickle
    return _placeholder("builtins", "getattr")(obj, name)


def _find_class(unpickler: Any, find_real: Any, module: str, name: str) -> Any:
    module, name = _python3_name(module, name)
    standin = METAFLOW_STANDINS.get((module, name))
    if standin is not None:
        return standin
    if module == METAFLOW_CLIENT_MODULE and name in CLIENT_CLASSES:
        return CLIENT_CLASSES[name]
    if not unpickler.trusted:
        module, name = _RESOLVED_AS.get((module, name), (module, name))
        if (module, name) == ("builtins", "getattr"):
            return _restricted_getattr
        if (module, name) not in _ALLOWED:
            return _placeholder(module, name)
    try:
        return find_real(module, name)
    except ImportError as exc:
        raise ModuleNotFoundError(
            "cannot unpickle %s.%s: module '%s' is not installed here" % (module, name, module), name=module
        ) from exc
    except AttributeError as exc:
        raise AttributeError(
            "cannot unpickle %s.%s: module '%s' has no '%s' here (a class defined in the flow's file is only "
            "importable when running from the flow's directory)" % (module, name, module, name)
        ) from exc


class _Unpickler(pickle.Unpickler):
    """trusted=True: the C unpickler."""

    trusted = True

    def find_class(self, module: str, name: str) -> Any:
        return _find_class(self, super().find_class, module, name)


class _RestrictedUnpickler(pickle._Unpickler):
    """trusted=False: pickle's pure-Python unpickler, because its opcodes can be checked (module docstring)."""

    trusted = False

    def __init__(self, file: io.BytesIO):
        super().__init__(file)
        # what find_class returned during this load, by id (kept alive): (object, guard)
        self._named: Dict[int, Tuple[Any, Optional[Callable]]] = {}
        # objects BUILD gave their state (kept alive): a second BUILD is refused
        self._built: Dict[int, Any] = {}
        # objects made without their constructor whose C state only a BUILD sets: the load fails if one is left
        self._unbuilt: Dict[int, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = _find_class(self, super().find_class, module, name)
        module, name = _RESOLVED_AS.get(_python3_name(module, name), _python3_name(module, name))
        self._named[id(found)] = (found, _ALLOWED.get((module, name)))
        return found

    def _guard_for(self, func: Any) -> Optional[Callable]:
        named = self._named.get(id(func))
        if named is not None:
            return named[1]
        if isinstance(func, UntrustedObject):
            return None
        raise pickle.UnpicklingError("untrusted pickle calls %r, which it did not name as a global: refused" % (func,))

    def _load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        guard = self._guard_for(func)
        value = func(*args) if guard is None else guard(func, args)
        if func is _restricted_getattr and callable(value) and not isinstance(value, UntrustedObject):
            self._named[id(value)] = (value, _zone_key)  # ZoneInfo._unpickle
        elif getattr(func, "__name__", "").startswith("__pyx_unpickle_") and args and args[-1] is None:
            self._unbuilt[id(value)] = value  # Cython's reconstructor: the state follows in a BUILD
        else:
            _check_made(value)
        self.stack[-1] = value

    def _load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, {}))

    def _load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))

    def _new(self, cls: Any, args: tuple, kwargs: dict) -> Any:
        guard = self._guard_for(cls)
        if guard is None:
            obj = cls.__new__(cls, *args, **kwargs)
        else:

            def new(*args: Any) -> Any:
                return cls.__new__(cls, *args, **kwargs)

            new.__qualname__ = "%s.__new__" % getattr(cls, "__qualname__", "?")
            obj = guard(new, args)
        if not _complete_without_state(obj):
            self._unbuilt[id(obj)] = obj
        return obj

    def _load_build(self) -> None:
        # BUILD on a class, function or constant the pickle named would change it for the whole process (set
        # `pandas.Index.__repr__`); pickles of data only ever BUILD objects they have just created, and never set
        # dunder attributes (`__class__`, `__reduce_ex__`, `__setstate__`; pandas' __setstate__ sets any key), nor
        # shadow a method with their own callable (what a renderer calls next: `frame.to_csv`).
        state = self.stack[-1]
        target = self.stack[-2]
        if isinstance(target, (type, types.ModuleType)) or id(target) in self._named:
            raise pickle.UnpicklingError("untrusted pickle sets attributes of %r: refused" % (target,))
        if isinstance(target, UntrustedObject):
            pickle._Unpickler.load_build(self)  # its __setstate__ ignores the state
            return
        # A data pickle builds each object once, before anything else holds it. Held by more than the stack, the
        # memo, `target` and getrefcount's argument, the object is shared (np.ma.masked, an enum member: BUILD would
        # change it for the whole process) or already in use (an array a pandas block checked, a dtype an array
        # has): refused, as is a second BUILD.
        self._unbuilt.pop(id(target), None)
        if sys.getrefcount(target) > 4 or id(target) in self._built:
            raise pickle.UnpicklingError("untrusted pickle changes a %s that is built, shared or in use: refused"
                                         % type(target).__name__)
        self._built[id(target)] = target
        parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)  # (dict, slots) or dict
        for part in parts:
            for key in part if isinstance(part, dict) else ():
                if isinstance(key, str) and (key.startswith("__") or callable(getattr(type(target), key, None))):
                    raise pickle.UnpicklingError("untrusted pickle sets %s of a %s, a dunder or a method: refused"
                                                 % (key, type(target).__name__))
        module = type(target).__module__
        if module == "pandas.core.internals.managers":
            _check_manager_state(state)
        elif module.startswith("PIL."):
            _check_image_state(state)
        pickle._Unpickler.load_build(self)
        if module.startswith("numpy") and isinstance(target, sys.modules["numpy"].dtype):
            _check_dtype(target)
        _check_made(target)

    def _load_stop(self) -> None:
        if self._unbuilt:
            raise pickle.UnpicklingError("untrusted pickle leaves a %s without the state it needs: refused"
                                         % type(next(iter(self._unbuilt.values()))).__name__)
        pickle._Unpickler.load_stop(self)

    def _filled(self, target: Any) -> None:
        # APPENDS, SETITEMS...: pickles of data fill containers they made, not a class or function they named
        if id(target) in self._named:
            raise pickle.UnpicklingError("untrusted pickle adds items to %r: refused" % (target,))

    def _load_append(self) -> None:
        self._filled(self.stack[-2])
        pickle._Unpickler.load_append(self)

    def _load_setitem(self) -> None:
        self._filled(self.stack[-3])
        pickle._Unpickler.load_setitem(self)

    def _load_appends(self) -> None:
        self._filled(self.metastack[-1][-1])  # the object below the MARK
        pickle._Unpickler.load_appends(self)

    def _load_setitems(self) -> None:
        self._filled(self.metastack[-1][-1])
        pickle._Unpickler.load_setitems(self)

    def _load_additems(self) -> None:
        self._filled(self.metastack[-1][-1])
        pickle._Unpickler.load_additems(self)

    def _load_refused(self) -> None:
        raise pickle.UnpicklingError("untrusted pickle uses INST, OBJ or DUP, which pickles of data do not: refused")

    dispatch = {**pickle._Unpickler.dispatch, **{opcode[0]: load for opcode, load in (
        (pickle.REDUCE, _load_reduce), (pickle.NEWOBJ, _load_newobj), (pickle.NEWOBJ_EX, _load_newobj_ex),
        (pickle.BUILD, _load_build), (pickle.APPEND, _load_append), (pickle.APPENDS, _load_appends),
        (pickle.SETITEM, _load_setitem), (pickle.SETITEMS, _load_setitems), (pickle.ADDITEMS, _load_additems),
        (pickle.STOP, _load_stop),
        # never written for data: calls of a class (protocol 0/1), a second reference without the memo
        (pickle.INST, _load_refused), (pickle.OBJ, _load_refused), (pickle.DUP, _load_refused),
    )}}


class _NamesAGlobal(Exception):
    pass


class _DataOnlyUnpickler(pickle.Unpickler):
    """trusted=False, first try: the C unpickler, for pickles that name no global (numbers, strings, bytes and
    containers of them: most artifacts). With nothing from outside the pickle to act on, BUILD can only change
    objects the pickle itself made, so nothing needs checking. The first global named stops it, and the load
    starts over with `_RestrictedUnpickler`, which is slower."""

    def find_class(self, module: str, name: str) -> Any:
        raise _NamesAGlobal


def _placeholder(module: str, name: str) -> type:
    # named as the package (`<class 'client.unpickle.memmap'>`), like the stand-ins: not after this module
    return type(name, (UntrustedObject,), {"module": module, "name": name, "__module__": __package__})


def load(file: Any, trusted: bool = True) -> Any:
    """Unpickle from a seekable binary file object; `trusted=False` loads only allow-listed data types (module
    docstring)."""
    if trusted:
        return _Unpickler(file).load()
    start = file.tell()
    try:
        return _DataOnlyUnpickler(file).load()
    except _NamesAGlobal:
        file.seek(start)
        return _RestrictedUnpickler(file).load()


def loads(data: bytes, trusted: bool = True) -> Any:
    """Unpickle artifact bytes; `trusted=False` loads only allow-listed data types (see the module docstring)."""
    return load(io.BytesIO(data), trusted)
