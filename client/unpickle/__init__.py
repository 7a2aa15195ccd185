"""Unpickling artifacts without Metaflow installed, and without trusting the datastore.

Metaflow pickles a few of its own classes into artifacts (exception wrapper, ForeachFrame, IncludedFile, client
objects). `loads` maps them to the stand-ins below, so `task.exception`, `task.index` and IncludeFile values work
whether or not `metaflow` is importable. Everything else loads as Python would (Metaflow's behaviour), unless
`trusted=False`, what the mount does by default: a datastore is written by many people and jobs, and a pickle can
name any importable callable.

With `trusted=False` a pickle may name only the exact globals `(module, name)` in `_ALLOWED`, one table: the
classes and reconstructor functions that pickles of data really name (found by pickling real values;
tests/test_unpickle.py keeps that discovery) for the stdlib's containers, scalars, datetime, decimal, fractions,
uuid, pure paths and zoneinfo; numpy (1.x and 2.x names), pandas (2.x and 3.x names), pyarrow and PIL images; and
Metaflow's stand-ins. Any other global becomes an `UntrustedObject` placeholder, *without importing its module*: a
module is imported only when the pickle names an allowed global in it. Nothing is admitted by being a subclass of
a data type (`numpy.memmap` is an ndarray that maps a file). Refused outright: whatever opens, maps or writes
files (memmap, `numpy.load`, pandas readers, `io`/`codecs` file access; `pathlib` paths load as pure paths), runs
or compiles code (`eval`, `os.system`, `operator`/`functools` call chains, `copyreg`), or loads another pickle.

Allowed globals are not enough: a pickle also chooses how they are called and what state their objects get, and
numpy's and pandas' compiled code trusts pickled state (a forged dtype or Categorical reads arbitrary memory). So
`_RestrictedUnpickler` keeps, per load, to what pickles of data do:
- it calls only globals it named (and placeholders); classes data pickles only *refer* to (`list`,
  `numpy.ndarray`) not at all; some calls through a guard in the table: the arguments data pickles pass
  (`bytearray(b'..')`, not `bytearray(10**10)`; an array rebuilt from an empty shape, not from uninitialised
  memory) or a check of the result (Arrow arrays, pandas block placements);
- BUILD sets the state of an object once, before anything refers to it again, only if nothing outside the load
  holds it (not `np.ma.masked`, an enum member, a class or function it named), and never a dunder or a method;
  an object made without its constructor must get its state; the state must be what numpy or pandas would
  build (a dtype's flags and fields, Categorical and MultiIndex codes, block placements);
- APPENDS/SETITEMS fill only containers it made; INST, OBJ and DUP, which pickles of data never use, are refused.
`ZoneInfo(key)` reads the system's time zone files (a key cannot leave them). Memory and CPU bombs built from
allowed constructors (a list multiplied by memo references, a huge PIL image) are not stopped here: rendering
runs in a limited worker process for that.
"""
from .allowlist import _ALLOWED, _KNOWN_DATA_CLASSES, NUMPY_SCALAR_NAMES, allowed
from .standins import METAFLOW_STANDINS, ForeachFrame, IncludedFile, MetaflowExceptionWrapper, UntrustedObject
from .unpicklers import load, loads

__all__ = [
    "load", "loads", "allowed", "UntrustedObject", "NUMPY_SCALAR_NAMES", "METAFLOW_STANDINS",
    "MetaflowExceptionWrapper", "IncludedFile", "ForeachFrame", "_ALLOWED", "_KNOWN_DATA_CLASSES",
]
# The classes' public home stays client.unpickle, as when the unpickler was one module: reprs (in repr.txt) and
# pickles name it.
for _cls in (MetaflowExceptionWrapper, ForeachFrame, IncludedFile, UntrustedObject):
    _cls.__module__ = __name__
