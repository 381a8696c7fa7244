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
    [
        ["--scenarios", "raw,warp"],
        ["--env", "NO_EQUALS_SIGN"],
        ["--seconds", "0"],
        ["--rounds", "0"],
    ],
)
def test_bad_arguments_rejected(runner: ModuleType, arguments: list[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        runner.parse_args(arguments)

    assert raised.value.code == 2


def test_profile_and_floor_ratio_by_round(runner: ModuleType) -> None:
    def run(rate: float, p99: float, failures: int = 0) -> dict[str, object]:
        return {"requests_per_second": rate, "failures": failures, "latency_ms": {"p99": p99}}

    profile = runner.combine_rounds([run(3000.0, 9.0), run(3300.0, 12.0, failures=2)])
    floor = runner.combine_rounds([run(6000.0, 4.0), run(5000.0, 5.0)])

    found = runner.ratios({"profile": profile, "floor": floor})

    assert profile["requests_per_second"] == 3150.0
    assert profile["latency_ms"]["p99"] == 12.0
    assert profile["failures"] == 2
    assert found["profile_vs_floor"] == round(3150 / 5500, 3)
    assert found["profile_vs_floor_rounds"] == [0.5, 0.66]
