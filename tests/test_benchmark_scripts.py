"""
The benchmark scripts that run without the shared harness still work against the code.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from twisted.trial.unittest import SynchronousTestCase

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class InMemoryTests(SynchronousTestCase):
    def test_each_exchange_is_answered_and_pools_the_connection(self) -> None:
        """The measured loop proxies whole exchanges (it checks the first one itself)."""
        module = load("inmemory")
        for bare in (False, True):
            one = module.one_exchange(bare)
            for _ in range(3):
                one()
