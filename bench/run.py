"""Measure the service against the machine's limits, every scenario in one run.

    bench/run.sh                                   # all scenarios with the defaults
    bench/run.sh --workers 2 --hash-threads 1 --label tuned
    bench/run.sh --scenarios raw,login --seconds 30

Scenarios, each a wrk run against a service started here on 127.0.0.1 with a fresh
database on the local PostgreSQL. The profile and floor runs take turns, `--rounds` of each,
so that both rates of their ratio come from the same minutes:

  raw      argon2id verifications per second on all cores, one process per core running
           argon2-cffi directly at the service's settings: the physical limit for logins
  login    RemoteLogin throughput (POST /rum/login); every login verifies one argon2id hash
  profile  RemoteUserFetch throughput (POST /rum/user-profile)
  floor    the same profile requests against bench/floor_app.py, a bare ASGI app with asyncpg
  mixed    RemoteUserFetch latency while RemoteLogin saturates the CPU

Resident memory of every worker process is sampled during the service scenarios. Results go to
a JSON file in bench/results/ and a Markdown summary on standard output. Every request and
every database connection stays on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH_DIR))

SCENARIOS = ("raw", "login", "profile", "floor", "mixed")
USER_PASSWORD = "bench-password-0123"
RUM_USERNAME = "bench-digitalriver"
READY_TIMEOUT_SECONDS = 120.0

# Goals the results are compared against.
LOGIN_RATIO_GOAL = 0.85
PROFILE_RATIO_GOAL = 0.6
MIXED_P99_GOAL_MS = 100.0
RSS_GOAL_MB = 150.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(
        prog="bench/run.sh",
        description="Benchmark the service on loopback against the machine's limits.",
    )
    parser.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL server to create the benchmark database on (default: %(default)s)",
    )
    parser.add_argument("--workers", type=int, default=cores, help="uvicorn worker processes")
    parser.add_argument(
        "--hash-threads", type=int, help="SSO_HASH_THREADS per worker (default: the service's)"
    )
    parser.add_argument("--pool-size", type=int, default=10, help="SSO_DB_POOL_SIZE per worker")
    parser.add_argument("--max-overflow", type=int, default=5, help="SSO_DB_MAX_OVERFLOW")
    parser.add_argument("--users", type=int, default=1000, help="users to seed")
    parser.add_argument("--seconds", type=int, default=15, help="duration of each wrk run")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="profile and floor runs, alternating, each of --seconds (default: %(default)s)",
    )
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads per run")
    parser.add_argument(
        "--login-connections", type=int, default=4 * cores, help="wrk connections for logins"
    )
    parser.add_argument(
        "--profile-connections", type=int, default=32, help="wrk connections for profile fetches"
    )
    parser.add_argument(
        "--mixed-profile-connections",
        type=int,
        default=4,
        help="wrk connections for profile fetches during the mixed scenario",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment variable for the service (repeatable), e.g. SSO_LOG_LEVEL=warning",
    )
    parser.add_argument("--label", default="run", help="name for this run in the results")
    parser.add_argument(
        "--results-dir", type=Path, default=BENCH_DIR / "results", help="where to write JSON"
    )
    parser.add_argument(
        "--keep-database", action="store_true", help="leave the benchmark database in place"
    )
    options = parser.parse_args(argv)

    chosen = [name.strip() for name in options.scenarios.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}: choose from {', '.join(SCENARIOS)}")
    options.scenarios = [name for name in SCENARIOS if name in chosen]
    for entry in options.env:
        if "=" not in entry:
            parser.error(f"--env {entry!r} is not NAME=VALUE")
    for name in ("workers", "pool_size", "users", "seconds", "rounds", "wrk_threads"):
        if getattr(options, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return options


# ---------------------------------------------------------------------------------------------
# Machine, tools and processes
# ---------------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """Return the path of wrk, installing Debian's package when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit("wrk is not installed: run `apt-get install -y wrk` as root")
    print("installing wrk with apt-get", file=sys.stderr)
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=environment)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=environment)
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("apt-get installed wrk but it is not on PATH")
    return found


def machine_info() -> dict[str, Any]:
    cpu_model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    memory_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def venv_tool(name: str) -> str:
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def wait_ready(base_url: str, path: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}; see {log}")
        try:
            with urllib.request.urlopen(base_url + path, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise SystemExit(f"server at {base_url} not ready after {READY_TIMEOUT_SECONDS}s; see {log}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class MemorySampler:
    """Samples the resident memory of a server process and its children every 250 ms."""

    root_pid: int
    peak_rss: dict[int, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.root_pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for process in processes:
            try:
                if "resource_tracker" in " ".join(process.cmdline()):
                    continue  # multiprocessing's helper, not a server process
                rss = process.memory_info().rss
                role = "supervisor" if process.pid == self.root_pid else "worker"
                if process.pid == self.root_pid and not root.children():
                    role = "worker"
                self.names[process.pid] = role
                self.peak_rss[process.pid] = max(rss, self.peak_rss.get(process.pid, 0))
            except psutil.NoSuchProcess:
                continue

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self._sample()

    @contextmanager
    def running(self) -> Iterator[None]:
        self._stop.clear()
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()

    def summary(self) -> dict[str, Any]:
        workers = [rss for pid, rss in self.peak_rss.items() if self.names[pid] == "worker"]
        supervisors = [rss for pid, rss in self.peak_rss.items() if self.names[pid] != "worker"]
        mib = 1024 * 1024
        return {
            "worker_peak_rss_mib": [round(rss / mib, 1) for rss in sorted(workers)],
            "max_worker_rss_mib": round(max(workers) / mib, 1) if workers else None,
            "supervisor_rss_mib": round(max(supervisors) / mib, 1) if supervisors else None,
        }


# ---------------------------------------------------------------------------------------------
# Database
# ---------------------------------------------------------------------------------------------


async def create_database(admin_url: str) -> tuple[str, str]:
    """Create an empty database next to `admin_url`'s; return its name and URL."""
    import asyncpg
    from sqlalchemy.engine import make_url

    name = f"sso_bench_{os.getpid()}_{secrets.token_hex(3)}"
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    return name, url


async def drop_database(admin_url: str, name: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def migrate(database_url: str) -> None:
    environment = {**os.environ, "SSO_DATABASE_URL": database_url, "SSO_ENVIRONMENT": "development"}
    subprocess.run(
        [venv_tool("sso-provider"), "migrate"], check=True, cwd=ROOT, env=environment
    )


async def seed_users(database_url: str, count: int) -> dict[str, Any]:
    """Insert `count` users sharing one argon2id hash made with the service's settings.

    Every user has its own row, login and ERID; sharing the hash only saves seeding time, and a
    verification costs the same whichever user's hash it checks.
    """
    from app.db.engine import create_engine, create_sessionmaker
    from app.db.url import to_async_url
    from app.identity.passwords import PasswordHasher
    from app.identity.schemas import UserCreate
    from app.identity.service import create_user
    from app.settings import Settings

    settings = Settings(environment="development")
    hasher = PasswordHasher(settings)
    password_hash = await hasher.hash(USER_PASSWORD)
    engine = create_engine(to_async_url(database_url), settings)
    sessionmaker = create_sessionmaker(engine)
    started = time.perf_counter()
    try:
        for first in range(0, count, 500):
            async with sessionmaker() as session:
                for number in range(first, min(first + 500, count)):
                    data = UserCreate(
                        login=f"bench-user-{number:06d}@example.com",
                        email=f"bench-user-{number:06d}@example.com",
                        first_name="Émile",
                        last_name=f"Durand-{number}",
                        locale="fr_FR",
                        home_phone="+33 1 23 45 67 89",
                        external_reference_id=f"BENCH-{number:06d}",
                        password_hash=password_hash,
                    )
                    await create_user(session, hasher, data, created_via="import")
                await session.commit()
    finally:
        await engine.dispose()
        hasher.close()
    return {
        "users": count,
        "seconds": round(time.perf_counter() - started, 1),
        "hash_prefix": password_hash.split("$", 4)[:4],
    }


# ---------------------------------------------------------------------------------------------
# Servers and load
# ---------------------------------------------------------------------------------------------


@dataclass
class Target:
    base_url: str
    authorization: str


def start_service(
    options: argparse.Namespace, database_url: str, rum_password: str, log: Path
) -> tuple[subprocess.Popen[bytes], Target]:
    port = free_port()
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("SSO_")
    }
    environment.update(
        SSO_DATABASE_URL=database_url,
        SSO_ENVIRONMENT="production",
        SSO_RUM_USERNAME=RUM_USERNAME,
        SSO_RUM_PASSWORD=rum_password,
        SSO_DR_SITE_ID="headwtr",
        SSO_DB_POOL_SIZE=str(options.pool_size),
        SSO_DB_MAX_OVERFLOW=str(options.max_overflow),
        SSO_LOG_FORMAT="json",
    )
    if options.hash_threads is not None:
        environment["SSO_HASH_THREADS"] = str(options.hash_threads)
    for entry in options.env:
        name, _, value = entry.partition("=")
        environment[name] = value
    command = [venv_tool("sso-provider"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(options.workers)]
    with log.open("ab") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT
        )
    target = Target(f"http://127.0.0.1:{port}", basic_authorization(rum_password))
    try:
        wait_ready(target.base_url, "/readyz", process, log)
    except BaseException:
        stop(process)
        raise
    return process, target


def start_floor(
    options: argparse.Namespace, database_url: str, rum_password: str, log: Path
) -> tuple[subprocess.Popen[bytes], Target]:
    port = free_port()
    authorization = basic_authorization(rum_password)
    environment = {
        **os.environ,
        "BENCH_FLOOR_DSN": database_url,
        "BENCH_AUTHORIZATION": authorization,
        "BENCH_FLOOR_POOL": str(options.pool_size),
    }
    command = [
        venv_tool("uvicorn"),
        "--app-dir",
        str(BENCH_DIR),
        "floor_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(options.workers),
        "--no-access-log",
        "--log-level",
        "warning",
        "--timeout-worker-healthcheck",
        "30",
    ]
    with log.open("ab") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT
        )
    target = Target(f"http://127.0.0.1:{port}", authorization)
    try:
        wait_listening(options, target, port, process, log)
    except BaseException:
        stop(process)
        raise
    return process, target


def wait_listening(
    options: argparse.Namespace,
    target: Target,
    port: int,
    process: subprocess.Popen[bytes],
    log: Path,
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"floor app exited with {process.returncode}; see {log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.25)
            continue
        run_wrk(options, target, "profile", connections=1, seconds=1)  # preflight and warm-up
        return
    raise SystemExit(f"floor app not listening after {READY_TIMEOUT_SECONDS}s; see {log}")


def basic_authorization(password: str) -> str:
    token = base64.b64encode(f"{RUM_USERNAME}:{password}".encode()).decode()
    return f"Basic {token}"


def run_wrk(
    options: argparse.Namespace,
    target: Target,
    kind: str,
    *,
    connections: int,
    seconds: int,
) -> dict[str, Any]:
    """Run one wrk load and return the script's summary with requests per second added."""
    threads = min(options.wrk_threads, connections)
    environment = {
        **os.environ,
        "BENCH_KIND": kind,
        "BENCH_USERS": str(options.users),
        "BENCH_PASSWORD": USER_PASSWORD,
        "BENCH_AUTHORIZATION": target.authorization,
    }
    command = [
        options.wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH_DIR / "wrk" / "callback.lua"),
        target.base_url,
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, env=environment, check=False
    )
    summary_line = next(
        (line for line in completed.stdout.splitlines() if line.startswith("BENCH_JSON ")), None
    )
    if completed.returncode != 0 or summary_line is None:
        raise SystemExit(f"wrk failed:\n{completed.stdout}\n{completed.stderr}")
    summary: dict[str, Any] = json.loads(summary_line.removeprefix("BENCH_JSON "))
    summary["connections"] = connections
    summary["threads"] = threads
    summary["requests_per_second"] = round(
        summary["requests"] / (summary["duration_us"] / 1_000_000), 1
    )
    summary["latency_ms"] = {
        key: round(value / 1000, 2) for key, value in summary.pop("latency_us").items()
    }
    if summary["requests"] == 0:
        raise SystemExit(f"{kind}: no request completed in {seconds}s: {summary}")
    if summary["failures"]:
        # Kept in the results and shown in the summary: a failure under load is a finding.
        print(f"{kind}: {summary['failures']} failed responses", file=sys.stderr)
    return summary


def run_mixed(options: argparse.Namespace, target: Target) -> dict[str, Any]:
    """Profile fetches with few connections while logins saturate the hashing threads."""
    results: dict[str, dict[str, Any]] = {}

    def load(kind: str, connections: int) -> None:
        results[kind] = run_wrk(
            options, target, kind, connections=connections, seconds=options.seconds
        )

    logins = threading.Thread(target=load, args=("login", options.login_connections))
    logins.start()
    time.sleep(1.0)  # let the logins fill the hashing pool before measuring profile latency
    load("profile", options.mixed_profile_connections)
    logins.join()
    return {"login": results["login"], "profile": results["profile"]}


def scrape_hashing(target: Target) -> dict[str, float]:
    """Read the hashing histograms from /metrics: mean verification time and queue wait."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(target.base_url + "/metrics", timeout=10) as response:
        exposition = response.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.labels.get("operation") == "verify" and sample.name.endswith(
                ("_sum", "_count")
            ):
                values[sample.name] = sample.value
    duration_count = values.get("sso_password_hashing_duration_seconds_count", 0.0)
    wait_count = values.get("sso_password_hashing_wait_seconds_count", 0.0)
    return {
        "verifications": duration_count,
        "mean_verify_ms": round(
            1000 * values.get("sso_password_hashing_duration_seconds_sum", 0.0) / duration_count,
            1,
        )
        if duration_count
        else 0.0,
        "mean_queue_wait_ms": round(
            1000 * values.get("sso_password_hashing_wait_seconds_sum", 0.0) / wait_count, 1
        )
        if wait_count
        else 0.0,
    }


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def run(options: argparse.Namespace) -> dict[str, Any]:
    from argon2_baseline import measure

    from app.settings import Settings

    options.wrk = ensure_wrk()
    defaults = Settings.model_fields
    argon2 = {
        "memory_kib": defaults["argon2_memory_cost_kib"].default,
        "time_cost": defaults["argon2_time_cost"].default,
        "parallelism": defaults["argon2_parallelism"].default,
    }
    for entry in options.env:
        name, _, value = entry.partition("=")
        if name == "SSO_ARGON2_MEMORY_COST_KIB":
            argon2["memory_kib"] = int(value)
        elif name == "SSO_ARGON2_TIME_COST":
            argon2["time_cost"] = int(value)
        elif name == "SSO_ARGON2_PARALLELISM":
            argon2["parallelism"] = int(value)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    options.results_dir.mkdir(parents=True, exist_ok=True)
    log = options.results_dir / f"{stamp}-{options.label}-server.log"
    result: dict[str, Any] = {
        "label": options.label,
        "started": stamp,
        "machine": machine_info(),
        "load_average_before": load_average(),
        "command": " ".join(["bench/run.sh", *sys.argv[1:]]),
        "config": {
            "workers": options.workers,
            "hash_threads": options.hash_threads,
            "pool_size": options.pool_size,
            "max_overflow": options.max_overflow,
            "users": options.users,
            "seconds": options.seconds,
            "rounds": options.rounds,
            "login_connections": options.login_connections,
            "profile_connections": options.profile_connections,
            "mixed_profile_connections": options.mixed_profile_connections,
            "argon2id": argon2,
            "env": options.env,
        },
        "scenarios": {},
    }
    scenarios = result["scenarios"]

    if "raw" in options.scenarios:
        print("raw argon2id verification rate ...", file=sys.stderr)
        scenarios["raw"] = measure(
            seconds=options.seconds,
            processes=os.cpu_count() or 1,
            memory_kib=argon2["memory_kib"],
            time_cost=argon2["time_cost"],
            parallelism=argon2["parallelism"],
        )

    needs_database = {"login", "profile", "floor", "mixed"} & set(options.scenarios)
    if needs_database:
        database_name, database_url = asyncio.run(create_database(options.database_url))
        rum_password = secrets.token_urlsafe(24)
        try:
            migrate(database_url)
            result["seed"] = asyncio.run(seed_users(database_url, options.users))
            service_scenarios = [
                name for name in ("login", "profile", "mixed") if name in options.scenarios
            ]
            floor: Callable[[], tuple[subprocess.Popen[bytes], Target]] | None = None
            if "floor" in options.scenarios:
                floor = functools.partial(start_floor, options, database_url, rum_password, log)
            if service_scenarios:
                run_service_scenarios(
                    options, database_url, rum_password, log, service_scenarios, scenarios, floor
                )
            if floor is not None and "floor" not in scenarios:
                print("floor: bare ASGI profile fetches ...", file=sys.stderr)
                process, target = floor()
                try:
                    scenarios["floor"] = combine_rounds(
                        [run_profile(options, target) for _ in range(options.rounds)]
                    )
                finally:
                    stop(process)
        finally:
            if not options.keep_database:
                asyncio.run(drop_database(options.database_url, database_name))

    result["load_average_after"] = load_average()
    result["ratios"] = ratios(scenarios)
    output = options.results_dir / f"{stamp}-{options.label}.json"
    output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    result["output"] = str(output)
    return result


def run_profile(options: argparse.Namespace, target: Target) -> dict[str, Any]:
    return run_wrk(
        options, target, "profile", connections=options.profile_connections, seconds=options.seconds
    )


def combine_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Summarise runs of equal length: the mean rate, the highest p99, every round's figures."""
    return {
        "requests_per_second": round(
            sum(single["requests_per_second"] for single in rounds) / len(rounds), 1
        ),
        "failures": sum(single["failures"] for single in rounds),
        "latency_ms": {"p99": max(single["latency_ms"]["p99"] for single in rounds)},
        "rounds": rounds,
    }


def run_profile_rounds(
    options: argparse.Namespace,
    service: Target,
    floor: Callable[[], tuple[subprocess.Popen[bytes], Target]] | None,
    scenarios: dict[str, Any],
) -> None:
    if floor is None:
        rounds = [run_profile(options, service) for _ in range(options.rounds)]
        scenarios["profile"] = combine_rounds(rounds)
        return
    process, floor_target = floor()
    profile_rounds, floor_rounds = [], []
    try:
        for number in range(options.rounds):
            if number % 2 == 0:
                profile_rounds.append(run_profile(options, service))
                floor_rounds.append(run_profile(options, floor_target))
            else:
                floor_rounds.append(run_profile(options, floor_target))
                profile_rounds.append(run_profile(options, service))
    finally:
        stop(process)
    scenarios["profile"] = combine_rounds(profile_rounds)
    scenarios["floor"] = combine_rounds(floor_rounds)


def run_service_scenarios(
    options: argparse.Namespace,
    database_url: str,
    rum_password: str,
    log: Path,
    names: list[str],
    scenarios: dict[str, Any],
    floor: Callable[[], tuple[subprocess.Popen[bytes], Target]] | None,
) -> None:
    """Run the service's scenarios; with `floor`, profile runs alternate with floor runs.

    The machine's speed drifts by a tenth or more within minutes, so the two rates of the
    profile/floor ratio come from runs that take turns. Even rounds run profile then floor,
    and odd rounds floor then profile, so a steady drift favours neither. `floor` starts the
    floor app, which runs only during these rounds and opens its database connections only
    then.
    """
    server, target = start_service(options, database_url, rum_password, log)
    sampler = MemorySampler(server.pid)
    try:
        # Preflight and warm-up; a login can take over a second on a busy machine.
        run_wrk(options, target, "login", connections=1, seconds=5)
        run_wrk(options, target, "profile", connections=1, seconds=2)
        with sampler.running():
            if "login" in names:
                print("login: RemoteLogin throughput ...", file=sys.stderr)
                scenarios["login"] = run_wrk(
                    options,
                    target,
                    "login",
                    connections=options.login_connections,
                    seconds=options.seconds,
                )
                scenarios["login"]["hashing"] = scrape_hashing(target)
            if "profile" in names:
                print("profile: RemoteUserFetch throughput ...", file=sys.stderr)
                run_profile_rounds(options, target, floor, scenarios)
            if "mixed" in names:
                print("mixed: profile latency under login load ...", file=sys.stderr)
                scenarios["mixed"] = run_mixed(options, target)
        scenarios["memory"] = sampler.summary()
    finally:
        stop(server)


def ratios(scenarios: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    raw = scenarios.get("raw", {}).get("per_second")
    login = scenarios.get("login", {}).get("requests_per_second")
    if raw and login:
        found["login_vs_raw_argon2id"] = round(login / raw, 3)
    floor = scenarios.get("floor", {}).get("requests_per_second")
    profile = scenarios.get("profile", {}).get("requests_per_second")
    if floor and profile:
        found["profile_vs_floor"] = round(profile / floor, 3)
        # Each round's profile run and floor run, as `run_profile_rounds` pairs them.
        pairs = zip(
            scenarios["profile"].get("rounds", ()),
            scenarios["floor"].get("rounds", ()),
            strict=True,
        )
        found["profile_vs_floor_rounds"] = [
            round(fetch["requests_per_second"] / bare["requests_per_second"], 3)
            for fetch, bare in pairs
        ]
    mixed = scenarios.get("mixed")
    if mixed:
        found["mixed_profile_p99_ms"] = mixed["profile"]["latency_ms"]["p99"]
    memory = scenarios.get("memory")
    if memory:
        found["max_worker_rss_mib"] = memory["max_worker_rss_mib"]
    return found


def markdown(result: dict[str, Any]) -> str:
    scenarios = result["scenarios"]
    found = result["ratios"]
    lines = [
        f"Run `{result['label']}` ({result['started']}): {result['command']}",
        "",
        "| measure | value | goal |",
        "|---|---|---|",
    ]
    if "raw" in scenarios:
        raw_rate = scenarios["raw"]["per_second"]
        lines.append(f"| raw argon2id verifications/s, all cores | {raw_rate:.1f} | |")
    if "login" in scenarios:
        login = scenarios["login"]
        lines.append(
            f"| RemoteLogin requests/s (p99 {login['latency_ms']['p99']} ms, "
            f"{login['failures']} failed) | {login['requests_per_second']} | |"
        )
    if "login_vs_raw_argon2id" in found:
        lines.append(
            f"| login / raw argon2id | {found['login_vs_raw_argon2id']} | ≥ {LOGIN_RATIO_GOAL} |"
        )
    if "profile" in scenarios:
        profile = scenarios["profile"]
        lines.append(
            f"| RemoteUserFetch requests/s (p99 {profile['latency_ms']['p99']} ms, "
            f"{profile['failures']} failed) | {profile['requests_per_second']} | |"
        )
    if "floor" in scenarios:
        lines.append(f"| floor requests/s | {scenarios['floor']['requests_per_second']} | |")
    if "profile_vs_floor" in found:
        by_round = ", ".join(str(ratio) for ratio in found["profile_vs_floor_rounds"])
        lines.append(
            f"| profile / floor (mean rates; by round {by_round}) "
            f"| {found['profile_vs_floor']} | ≥ {PROFILE_RATIO_GOAL} |"
        )
    if "mixed_profile_p99_ms" in found:
        mixed = scenarios["mixed"]
        lines.append(
            f"| profile p99 ms under login load ({mixed['login']['requests_per_second']} "
            f"logins/s alongside) | {found['mixed_profile_p99_ms']} | < {MIXED_P99_GOAL_MS:.0f} |"
        )
    if "max_worker_rss_mib" in found:
        memory = scenarios["memory"]
        lines.append(
            f"| max worker RSS MiB (workers {memory['worker_peak_rss_mib']}) "
            f"| {found['max_worker_rss_mib']} | < {RSS_GOAL_MB:.0f} |"
        )
    lines.append("")
    lines.append(
        f"Load average before/after: {result['load_average_before']} / "
        f"{result['load_average_after']}. Results: {result.get('output', '')}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_args(argv)
    result = run(options)
    print(markdown(result))


if __name__ == "__main__":
    main()
