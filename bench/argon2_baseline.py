"""The machine's raw argon2id verification rate: one process per core, argon2-cffi directly.

This is the physical limit for login throughput at the same parameters, because every login
costs one verification and nothing else in a login comes close to its CPU cost.

    .venv/bin/python bench/argon2_baseline.py --seconds 10
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time

from argon2 import PasswordHasher, Type

PASSWORD = "raw-baseline-password"


def _verify_for(seconds: float, memory_kib: int, time_cost: int, parallelism: int) -> int:
    hasher = PasswordHasher(
        time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID
    )
    encoded = hasher.hash(PASSWORD)
    count = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        hasher.verify(encoded, PASSWORD)
        count += 1
    return count


def measure(
    *,
    seconds: float,
    processes: int,
    memory_kib: int = 19456,
    time_cost: int = 2,
    parallelism: int = 1,
) -> dict[str, float]:
    """Run `processes` verifiers for `seconds` and return their combined rate per second."""
    arguments = [(seconds, memory_kib, time_cost, parallelism)] * processes
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        counts = pool.starmap(_verify_for, arguments)
    elapsed = time.perf_counter() - started
    return {
        "processes": processes,
        "seconds": seconds,
        "verifications": sum(counts),
        "per_second": sum(counts) / seconds,
        "wall_seconds": elapsed,
        "memory_kib": memory_kib,
        "time_cost": time_cost,
        "parallelism": parallelism,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time per process")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--memory-kib", type=int, default=19456)
    parser.add_argument("--time-cost", type=int, default=2)
    parser.add_argument("--parallelism", type=int, default=1)
    options = parser.parse_args()
    result = measure(
        seconds=options.seconds,
        processes=options.processes,
        memory_kib=options.memory_kib,
        time_cost=options.time_cost,
        parallelism=options.parallelism,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
