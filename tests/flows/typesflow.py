"""A zoo of artifact values for typed exports and for safe unpickling: builtins, containers with awkward keys,
datetime/Decimal, bytes, a few MB blob, numpy/pandas/PIL objects, a class defined here (pickled as
__main__.Point), and an object whose unpickling runs a shell command."""
import datetime
import decimal
import os
import random

from metaflow import Config, FlowSpec, JSONType, Parameter, step


class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __repr__(self):
        return "Point(%r, %r)" % (self.x, self.y)


class RunsCodeOnLoad:
    """Unpickling this calls os.system, which touches the file named by $MFFS_PICKLE_MARKER at *load* time.
    A reader that unpickles untrusted artifacts blindly is detectable by that file appearing."""

    def __reduce__(self):
        return (os.system, ('test -n "$MFFS_PICKLE_MARKER" && touch "$MFFS_PICKLE_MARKER"',))


class TypesFlow(FlowSpec):
    options = Parameter("options", type=JSONType, default='{"depth": 3, "names": ["x", "y"]}')
    verbose = Parameter("verbose", type=bool, default=False)
    settings = Config("settings", default_value={"lr": 0.01, "layers": [64, 32]})

    @step
    def start(self):
        import numpy
        import pandas
        from PIL import Image

        self.nested = {"a": [1, [2, 3], {"b": [4, 5]}], "c": {"d": []}}
        self.nonstr_keys = {1: "one", (2, 3): "tuple", None: "none", 2.5: "float", b"k": "bytes"}
        self.tup = (1, "two", 3.0)
        self.a_set = {3, 1, 2}
        self.a_frozenset = frozenset({"x", "y"})
        self.when = datetime.datetime(2024, 1, 2, 3, 4, 5, 678901)
        self.when_utc = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
        self.day = datetime.date(2024, 2, 29)
        self.duration = datetime.timedelta(days=1, seconds=2)
        self.price = decimal.Decimal("12.34")
        self.text = "héllo ✓ 日本 😀"
        self.raw = b"\x00\x01binary\xff"
        self.int_value = 7
        self.float_value = 3.25
        self.bool_value = True
        self.none_value = None
        self.special_floats = [float("nan"), float("inf"), -0.0]
        self.big = random.Random(0).randbytes(3 * 1024 * 1024)
        self.point = Point(1, 2)
        self.evil = RunsCodeOnLoad()
        self.array = numpy.arange(12, dtype=numpy.float64).reshape(3, 4)
        self.frame = pandas.DataFrame({"n": [1, 2, 3], "s": ["x", "y", "é"], "f": [0.5, 1.5, 2.5]})
        self.series = pandas.Series([1.0, 2.0, 3.0], name="values")
        self.image = Image.new("RGB", (8, 6), color=(200, 30, 40))
        self.next(self.end)

    @step
    def end(self):
        print("types done")


if __name__ == "__main__":
    TypesFlow()
