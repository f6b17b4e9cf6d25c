"""Doctests of the toolchain packages, imported by their installed names.

pytest's --doctest-modules covers cellsdk/; converters/ and benchmarks/ are
installed as cellsdk.converters and cellsdk.benchmarks, and collecting them
from their folders would import them a second time as top-level packages.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import cellsdk.benchmarks
import cellsdk.converters

MODULES = sorted(
    info.name
    for package in (cellsdk.converters, cellsdk.benchmarks)
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + ".")
)


@pytest.mark.parametrize("name", MODULES)
def test_module_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0
