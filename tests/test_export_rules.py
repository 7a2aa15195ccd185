"""The contract every export rule keeps, checked for every rule in the registry (mffs.exports.RULES), so that a rule
added there is tested here without editing this file: its examples render and read back, with the tool the format
promises, as what they say; it is listed for the types it fits, only when its libraries are installed, and on a
mount without --trust-pickles only when the restricted unpickler loads the stored type."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any, List

import numpy
import pandas
import pytest
from PIL import Image

from client import unpickle
from client.unpickle import UntrustedObject, loads
from mffs.exports import EXPORT_NAMES, RULES, ExportRegistry, ExportRule, export_names, render_export
from mffs.exports.rule import Example

MISSING_LIBRARY = "mffs_test_library_that_is_not_installed"


class Widget:
    """A class outside the unpickling allow-list: an untrusted mount loads it as a placeholder."""


def rule_id(rule: ExportRule) -> str:
    return "%s:%s" % (rule.name, rule.render.__name__.lstrip("_"))


def stored_type(example: Example) -> str:
    return example.stored_type or str(type(example.value))


def qualname(type_name: str) -> str:
    return type_name.split("'")[1]


def assert_same(read: Any, expected: Any) -> None:
    """`read` (what the format's reader gave) equals `expected`, by the equality of its kind."""
    if isinstance(expected, pandas.DataFrame):
        pandas.testing.assert_frame_equal(read, expected)
    elif isinstance(expected, numpy.ndarray):
        assert (read.dtype, read.shape) == (expected.dtype, expected.shape)
        numpy.testing.assert_array_equal(read, expected)
    elif isinstance(expected, Image.Image):
        assert (read.mode, read.size) == (expected.mode, expected.size)
        assert read.tobytes() == expected.tobytes()
    else:
        assert type(read) is type(expected) and read == expected, (read, expected)


@pytest.fixture(params=RULES, ids=rule_id)
def rule(request) -> ExportRule:
    return request.param


def examples_of(rule: ExportRule) -> List[Example]:
    examples = list(rule.examples())
    assert examples, "%s has no examples" % rule_id(rule)
    return examples


def test_every_rule_is_an_export_name(rule: ExportRule) -> None:
    assert rule.name in EXPORT_NAMES
    assert EXPORT_NAMES == tuple(dict.fromkeys(each.name for each in RULES))


def test_examples_read_back_with_the_promised_tool_as_they_say(rule: ExportRule) -> None:
    for example in examples_of(rule):
        data = render_export(rule.name, example.value)
        assert rule.render(example.value) == data  # the example is this rule's, not another of the same name
        assert_same(rule.read_back(data), example.expected)


def test_examples_are_of_types_the_rule_fits_and_list_it(rule: ExportRule) -> None:
    for example in examples_of(rule):
        assert rule.fits(qualname(stored_type(example))), stored_type(example)
        assert rule.name in export_names(stored_type(example))


def test_a_rule_whose_library_is_missing_is_not_listed(rule: ExportRule) -> None:
    installed = ExportRegistry([rule])
    missing = ExportRegistry([dataclasses.replace(rule, needs=rule.needs + (MISSING_LIBRARY,))])
    for example in examples_of(rule):
        assert installed.export_names(stored_type(example)) == [rule.name]
        assert missing.export_names(stored_type(example)) == []


def test_untrusted_mount_lists_the_rule_only_when_the_restricted_unpickler_loads_the_type(rule: ExportRule) -> None:
    for example in examples_of(rule):
        listed = rule.name in export_names(stored_type(example), trusted=False)
        restricted_value = loads(pickle.dumps(example.value, protocol=4), trusted=False)
        assert listed == (not isinstance(restricted_value, UntrustedObject)), stored_type(example)
        if listed:  # what the untrusted mount loads renders as the trusted value does
            assert_same(rule.read_back(render_export(rule.name, restricted_value)), example.expected)

    # The same rule made to fit every type: a type the unpickler does not build still gets nothing untrusted.
    fits_all = ExportRegistry([dataclasses.replace(rule, fits=lambda qualname: True)])
    assert not unpickle.allowed(Widget.__module__, Widget.__name__)
    assert fits_all.export_names(str(Widget), trusted=True) == [rule.name]
    assert fits_all.export_names(str(Widget), trusted=False) == []
