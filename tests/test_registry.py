"""The registry mechanism (bench.registry)."""
from __future__ import annotations

import pytest

from bench.registry import Registry, UnknownNameError
from defenses import DEFENSES


def test_register_and_get():
    reg = Registry("fruit")

    @reg.register("apple")
    class Apple:
        pass

    def pear():
        return "pear"

    reg.add("pear", pear)
    assert reg.get("apple") is Apple
    assert reg.get("pear") is pear
    assert "apple" in reg and "banana" not in reg
    assert len(reg) == 2


def test_duplicate_name_raises():
    reg = Registry("fruit")
    reg.add("apple", object())
    with pytest.raises(ValueError, match="fruit 'apple' is already registered"):
        reg.add("apple", object())

    with pytest.raises(ValueError, match="already registered"):
        @reg.register("apple")
        class Other:
            pass


def test_re_registering_the_same_object_is_harmless():
    reg = Registry("fruit")
    obj = object()
    reg.add("apple", obj)
    reg.add("apple", obj)  # e.g. a module imported twice
    assert reg.get("apple") is obj and len(reg) == 1


def test_unknown_name_suggests_closest():
    with pytest.raises(UnknownNameError) as err:
        DEFENSES.get("sphre")
    message = str(err.value)
    assert "did you mean 'sphere'" in message
    assert "unknown defense 'sphre'" in message
    assert "known:" in message and "none" in message
    assert isinstance(err.value, KeyError)
    assert not message.startswith('"')  # not KeyError's quoted repr


def test_unknown_name_without_close_match():
    reg = Registry("fruit")
    reg.add("apple", 1)
    with pytest.raises(KeyError) as err:
        reg.get("zzzzzz")
    assert "did you mean" not in str(err.value)
    assert "(known: apple)" in str(err.value)
    with pytest.raises(UnknownNameError, match=r"\(known: none\)"):
        Registry("empty").get("x")


def test_names_sorted():
    reg = Registry("fruit")
    for name in ("pear", "apple", "fig", "banana"):
        reg.add(name, name.upper())
    assert reg.names() == ["apple", "banana", "fig", "pear"]
    assert list(reg) == reg.names()
    assert DEFENSES.names() == sorted(DEFENSES.names())
    assert {"none", "sphere"} <= set(DEFENSES.names())
