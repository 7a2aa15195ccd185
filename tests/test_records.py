"""client.records.loads parses what Metaflow's json.dumps writes exactly as json.loads does, orjson or not."""
import json
import math

import pytest

from client import records

WRITTEN_BY_METAFLOW = [
    {"field_name": "attempt", "value": "0", "type": "attempt", "ts_epoch": 1795674744108, "tags": ["attempt_id:0"]},
    {"objects": {"x": "07dc954825200d76d3c0e4e9829500a0d1636b17"},
     "info": {"x": {"size": 21, "type": "<class 'int'>"}}},
    {"value": 2**70, "below": -(2**63) - 1, "top": 2**64 - 1, "low": -(2**63)},  # orjson makes floats of some
    {"sha": "07dc9548252007612345678901234567890d3c", "run_number": "1795674454630744", "ts_epoch": 1795674744170},
    {"value": float("nan"), "inf": float("inf"), "neg": float("-inf")},  # not JSON, but json.dumps writes them
    {"text": "naïve \u2603 \U0001f600", "escaped": "a\nb\"c\\"},
    [1.5, -0.0, 1e300, None, True, False, {}],
]


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return type(b) is list and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return type(b) is float and a == b and math.copysign(1, a) == math.copysign(1, b)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("value", WRITTEN_BY_METAFLOW, ids=range(len(WRITTEN_BY_METAFLOW)))
def test_loads_agrees_with_json(value):
    data = json.dumps(value).encode()
    assert _same(json.loads(data), records.loads(data))


@pytest.mark.parametrize("corrupt", [b"", b"{", b'{"a": 1', b"\x00\x01", b'{"a": 1}}', b'{"a": 12345678901234567890'])
def test_corrupt_record_is_a_value_error(corrupt):
    with pytest.raises(ValueError):
        records.loads(corrupt)
