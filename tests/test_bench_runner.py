"""The benchmark runner's command line; the benchmarks themselves never run in the test suite."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

RUNNER = Path(__file__).resolve().parents[1] / "bench" / "run.py"


@pytest.fixture(scope="module")
def runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", RUNNER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module
    spec.loader.exec_module(module)
    return module


def test_defaults_run_every_scenario(runner: ModuleType) -> None:
    options = runner.parse_args([])

    assert options.scenarios == list(runner.SCENARIOS)
    assert options.workers >= 1


def test_subset_keeps_canonical_order(runner: ModuleType) -> None:
    options = runner.parse_args(
        ["--scenarios", "mixed,raw", "--workers", "3", "--hash-threads", "1"]
    )

    assert options.scenarios == ["raw", "mixed"]
    assert options.workers == 3
    assert options.hash_threads == 1


@pytest.mark.parametrize(
    "arguments",
    [["--scenarios", "raw,warp"], ["--env", "NO_EQUALS_SIGN"], ["--seconds", "0"]],
)
def test_bad_arguments_rejected(runner: ModuleType, arguments: list[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        runner.parse_args(arguments)

    assert raised.value.code == 2
