"""Deployment artefacts: the PaaS lock file, the Procfile, the Docker image and compose file, the
systemd units, and the health check containers and units rely on.

The lock checks run offline: the lock's header records a fingerprint of pyproject's dependency list,
so a dependency changed without ``make lock`` fails here without a resolver or a network.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from catalyst.db.engine import session_scope
from catalyst.db.models import ServiceHealth
from catalyst.settings import load_settings
from tests.support import environment, wait_for

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "deploy" / "systemd"
HOST = socket.gethostname()


def _load_lock_module():
    spec = importlib.util.spec_from_file_location("catalyst_deploy_lock", ROOT / "deploy" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lock = _load_lock_module()


# -- the PaaS lock file --------------------------------------------------------------------------------------

def lock_pins(text: str) -> dict[str, list[tuple[str, str, bool]]]:
    """name -> [(version, marker, hashed)] for every ``name==version`` entry of a pip-compile style lock."""
    pins: dict[str, list[tuple[str, str, bool]]] = {}
    entries = re.split(r"\n(?=[A-Za-z0-9])", "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#")))
    for entry in entries:
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)\s*(?:;\s*([^\\]+))?", entry.strip())
        if m:
            pins.setdefault(canonicalize_name(m[1]), []).append(
                (m[2], (m[3] or "").strip(), "--hash=sha256:" in entry))
    return pins


def pinned_for_production(pins, name: str) -> str | None:
    """The version pinned for CPython 3.12 on Linux x86_64 (markers evaluated), or None."""
    env = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.0",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "os_name": "posix"}
    from packaging.markers import Marker

    for version, marker, _ in pins.get(canonicalize_name(name), []):
        if not marker or Marker(marker).evaluate(env):
            return version
    return None


def test_the_lock_was_compiled_from_pyprojects_current_dependencies():
    recorded = lock.recorded_fingerprint(ROOT / "requirements.txt")
    assert recorded, "requirements.txt records no dependency fingerprint: run `make lock`"
    assert recorded == lock.fingerprint(lock.dependencies(ROOT / "pyproject.toml")), (
        "pyproject.toml's dependencies changed since requirements.txt was compiled: run `make lock`")


def test_the_fingerprint_moves_with_a_dependency_change_but_not_with_layout(tmp_path):
    deps = lock.dependencies(ROOT / "pyproject.toml")
    base = lock.fingerprint(deps)
    assert lock.fingerprint(list(reversed(deps))) == base
    assert lock.fingerprint([d.replace(">=", " >= ") for d in deps]) == base
    assert lock.fingerprint(deps + ["rich>=13"]) != base
    assert lock.fingerprint(deps[1:]) != base
    bumped = [re.sub(r"<6\b", "<7", deps[0], count=1)] + deps[1:]
    assert bumped != deps and lock.fingerprint(bumped) != base
    # ... read from a pyproject file the same way `make lock` reads it
    text = (ROOT / "pyproject.toml").read_text().replace('"PyYAML>=6,<7",', '"PyYAML>=6,<8",')
    (tmp_path / "pyproject.toml").write_text(text)
    assert lock.fingerprint(lock.dependencies(tmp_path / "pyproject.toml")) != base


def test_every_dependency_is_pinned_with_hashes_at_a_version_its_specifier_allows():
    pins = lock_pins((ROOT / "requirements.txt").read_text())
    assert len(pins) > 20
    unhashed = [name for name, entries in pins.items() if not all(hashed for *_, hashed in entries)]
    assert not unhashed, f"pip --require-hashes refuses entries without hashes: {unhashed}"
    for dep in lock.dependencies(ROOT / "pyproject.toml"):
        req = Requirement(dep)
        version = pinned_for_production(pins, req.name)
        assert version is not None, f"{req.name} is not pinned in requirements.txt: run `make lock`"
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements.txt pins {req.name}=={version}, outside {req.specifier}: run `make lock`")
        for extra in req.extras:  # celery[redis], psycopg[binary]: the extra's packages are locked too
            wanted = {"redis": "redis", "binary": "psycopg-binary"}.get(extra)
            if wanted:
                assert pinned_for_production(pins, wanted), f"{req.name}[{extra}] needs {wanted} in the lock"


def test_lock_pins_parser_reads_markers_and_hashes():
    text = ("# header\nfoo==1.2 ; sys_platform == 'win32' \\\n    --hash=sha256:aa\n"
            "foo==1.3 ; sys_platform == 'linux' \\\n    --hash=sha256:bb\n    # via x\nbar==2.0\n")
    pins = lock_pins(text)
    assert pinned_for_production(pins, "foo") == "1.3"
    assert pins["bar"] == [("2.0", "", False)]


def test_python_version_file_names_the_python_pyproject_requires():
    pinned = (ROOT / ".python-version").read_text().strip()
    assert pinned == "3.12"
    with (ROOT / "pyproject.toml").open("rb") as fh:
        requires = SpecifierSet(tomllib.load(fh)["project"]["requires-python"])
    assert requires.contains(f"{pinned}.0")


def test_make_lock_regenerates_the_lock_with_uv_from_the_venv():
    dry = subprocess.run(["make", "-n", "lock"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "pip install" in dry.stdout and "uv" in dry.stdout  # installs the tool into .venv when absent
    assert "deploy/lock.py" in dry.stdout


# -- the Procfile ----------------------------------------------------------------------------------------

def procfile() -> dict[str, str]:
    lines = [l for l in (ROOT / "Procfile").read_text().splitlines() if l.strip() and not l.startswith("#")]
    return dict(l.split(": ", 1) for l in lines)


def celery_worker(argv: list[str]) -> dict:
    """The parts of a ``celery worker`` command that decide what it consumes and how."""
    i = argv.index("worker")
    opts = {"queues": None, "name": None, "concurrency": None, "prefetch": None}
    args = argv[i + 1:]
    for flag, key in (("-Q", "queues"), ("-n", "name"), ("-c", "concurrency"), ("--prefetch-multiplier", "prefetch")):
        if flag in args:
            opts[key] = args[args.index(flag) + 1]
    opts["queues"] = frozenset(opts["queues"].split(","))
    opts["name"] = opts["name"].split("@")[0]
    return opts


def argv_of(command: str) -> list[str]:
    words = shlex.split(command)
    while words and re.match(r"^[A-Z_]+=", words[0]):
        words.pop(0)
    return words


def test_procfile_runs_the_module_not_the_console_script_and_remaps_sigterm_on_workers():
    procs = procfile()
    assert set(procs) >= {"release", "worker", "exits", "scanner", "beat", "web"}
    assert procs["release"] == "python -m catalyst db upgrade"
    assert not any(argv_of(cmd)[0] == "catalyst" for cmd in procs.values())
    workers = {name: cmd for name, cmd in procs.items() if " worker " in cmd}
    assert set(workers) == {"worker", "exits", "scanner"}
    for cmd in workers.values():
        assert cmd.startswith("REMAP_SIGTERM=SIGQUIT ")
    consumed = [q for cmd in workers.values() for q in celery_worker(argv_of(cmd))["queues"]]
    assert sorted(consumed) == sorted({"scan", "evaluate", "monitor", "exit", "maintenance"})  # each queue once
    exits = celery_worker(argv_of(procs["exits"]))
    assert exits["queues"] == {"exit"} and exits["prefetch"] == "1"
    assert [cmd for cmd in procs.values() if argv_of(cmd)[-1] == "beat"] == [procs["beat"]]


def run_sh(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=30)


def test_procfile_web_refuses_to_serve_flower_without_credentials():
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"} | {"PORT": "0"}
    out = run_sh(procfile()["web"], env)
    assert out.returncode == 1
    assert "FLOWER_BASIC_AUTH=user:password is required" in out.stderr


def test_python_m_catalyst_migrates_a_database(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CATALYST_CONFIG")}
    env["CATALYST_VAR_DIR"] = str(tmp_path / "var")
    out = subprocess.run([sys.executable, "-m", "catalyst", "db", "upgrade"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("database at revision ")
    helped = subprocess.run([sys.executable, "-m", "catalyst", "--help"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert helped.returncode == 0 and helped.stdout.startswith("Usage: catalyst ")


def test_an_installed_package_migrates_from_where_catalyst_migrations_points(tmp_path):
    """The image installs a wheel (no migrations/ beside it): the scripts are found through the variable."""
    shutil.copytree(ROOT / "migrations", tmp_path / "scripts")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CATALYST_CONFIG")}
    env["CATALYST_VAR_DIR"] = str(tmp_path / "var")
    runs = {}
    for name, where in (("copied", tmp_path / "scripts"), ("missing", tmp_path / "nowhere")):
        env["CATALYST_MIGRATIONS"] = str(where)
        runs[name] = subprocess.run([sys.executable, "-m", "catalyst", "db", "upgrade"], cwd=tmp_path, env=env,
                                    capture_output=True, text=True, timeout=120)
    assert runs["copied"].returncode == 0, runs["copied"].stderr
    assert runs["copied"].stdout.startswith("database at revision ")
    assert runs["missing"].returncode != 0  # it really reads the variable, not the checkout's folder
    assert runs["missing"].stderr.strip().splitlines() == [
        f"Error: no Alembic migrations at {tmp_path / 'nowhere'} (set CATALYST_MIGRATIONS to the migrations folder)"]
    env_lines = [arg for op, arg in dockerfile_instructions() if op == "ENV"]
    target = next(arg.split("=", 1)[1] for arg in env_lines if arg.startswith("CATALYST_MIGRATIONS="))
    assert ("COPY", f"migrations {target}") in dockerfile_instructions()


# -- Docker ----------------------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "docker" / "Dockerfile").read_text())
    return [tuple(l.strip().split(None, 1)) for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]


def test_the_image_is_slim_non_root_non_editable_hash_locked_and_health_checked():
    instructions = dockerfile_instructions()
    froms = [arg for op, arg in instructions if op == "FROM"]
    assert froms and all(f.startswith("python:3.12-slim") for f in froms)
    users = [arg.strip() for op, arg in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    assert [op for op, _ in instructions].index("USER") > [op for op, _ in instructions].index("RUN")
    runs = " && ".join(arg for op, arg in instructions if op == "RUN")
    assert not re.search(r"pip install[^&]*(\s-e\s|--editable)", runs)
    assert re.search(r"pip install --require-hashes[^&]*-r [^&]*requirements\.txt", runs)
    assert re.search(r"pip install --no-deps [^&]*\.whl", runs)
    (healthcheck,) = [arg for op, arg in instructions if op == "HEALTHCHECK"]
    assert "catalyst.healthcheck" in healthcheck


def test_dockerignore_keeps_the_context_small_and_the_image_buildable():
    patterns = {l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
                if l.strip() and not l.startswith("#")}
    assert {".git", ".venv", "var", ".pytest_cache", ".hypothesis", "**/__pycache__"} <= patterns
    assert ".env" in patterns and "docker/.env" in patterns  # secrets never reach the build context
    copied = {"requirements.txt", "pyproject.toml", "README.md", "catalyst", "tasks", "workers", "migrations",
              "celeryconfig.py", "beat_schedule.py"}
    assert not copied & patterns


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())


APP_SERVICES = ("migrate", "worker", "exits", "scanner", "beat", "web", "metrics")


def test_compose_has_every_process_with_restarts_env_and_migrations_first():
    services = compose()["services"]
    assert set(APP_SERVICES) | {"postgres", "redis"} <= set(services)
    redis = services["redis"]
    assert {"--appendonly", "yes", "--maxmemory-policy", "noeviction"} <= set(redis["command"])
    assert any(v.endswith(":/data") for v in redis["volumes"]) and "healthcheck" in redis
    postgres = services["postgres"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"]) and "healthcheck" in postgres
    assert set(compose()["volumes"]) >= {v.split(":")[0] for v in redis["volumes"] + postgres["volumes"]}
    for name in APP_SERVICES:
        svc = services[name]
        assert "env_file" in svc, f"{name} gets no .env: FLOWER_BASIC_AUTH, ALPACA_*, ANTHROPIC_* would not reach it"
        assert svc["environment"]["REDIS_URL"].startswith("redis://redis:")
        if name == "migrate":
            assert svc["command"] == ["python", "-m", "catalyst", "db", "upgrade"]
            assert svc["restart"] == "no"
        else:
            assert svc["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
            assert svc["restart"] in ("always", "unless-stopped")
    for name in ("postgres", "redis"):
        assert services[name]["restart"] in ("always", "unless-stopped")
    beats = [n for n, s in services.items() if s.get("command", [None])[-1] == "beat"]
    assert beats == ["beat"] and services["beat"].get("deploy", {}).get("replicas", 1) == 1
    assert services["metrics"]["command"] == ["python", "-m", "catalyst", "metrics", "--port", "9108", "--bind", "0.0.0.0"]


def test_every_procfile_process_has_a_compose_counterpart_consuming_the_same_queues():
    services = compose()["services"]
    counterpart = {"release": "migrate"}
    for proc, command in procfile().items():
        svc = services[counterpart.get(proc, proc)]
        argv = argv_of(command)
        if "worker" in argv:
            assert celery_worker(svc["command"]) == celery_worker(argv), proc
        elif proc == "web":
            assert "flower" in " ".join(svc["command"])
        else:
            assert svc["command"] == argv, proc


def test_compose_web_refuses_to_serve_flower_without_credentials():
    command = compose()["services"]["web"]["command"]
    assert command[:2] == ["sh", "-c"]
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    out = run_sh(command[2].replace("$$", "$"), env)  # compose turns $$ into $
    assert out.returncode == 1 and "FLOWER_BASIC_AUTH=user:password is required" in out.stderr


def test_compose_healthchecks_name_each_containers_own_service():
    services = compose()["services"]
    expected = {"worker": "positions", "exits": "exits", "scanner": "scanner", "beat": "beat"}
    for svc, name in expected.items():
        assert services[svc]["healthcheck"]["test"] == ["CMD", "python", "-m", "catalyst.healthcheck", name]
        assert celery_worker(services[svc]["command"])["name"] == name if svc != "beat" else True


def env_example(path: Path) -> dict[str, str]:
    pairs = [l.split("=", 1) for l in path.read_text().splitlines() if l.strip() and not l.lstrip().startswith("#")]
    return {k.strip(): v.strip() for k, v in pairs}


@pytest.mark.parametrize("example", ["docker/.env.example", "deploy/systemd/catalyst.env.example"])
def test_env_examples_are_valid_configuration_with_placeholders_only(example, tmp_path):
    values = env_example(ROOT / example)
    assert values.get("FLOWER_BASIC_AUTH", "").count(":") == 1
    assert not [k for k, v in values.items() if v == ""], "an empty value is a value: comment optional ones out"
    assert not [k for k in values if re.search(r"(API_KEY|SECRET)", k)], "keys stay commented-out placeholders"
    env = {k: v for k, v in values.items() if k != "POSTGRES_PASSWORD"}
    env.setdefault("DATABASE_URL", "postgresql://catalyst:x@postgres:5432/catalyst")
    with environment(env | {"CATALYST_VAR_DIR": str(tmp_path)}):
        load_settings()  # raises on a value Catalyst would refuse at start-up


def compose_client() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return [shutil.which("docker-compose")] if shutil.which("docker-compose") else None


def test_compose_config_validates_with_the_example_env_and_passes_flower_its_credentials():
    client = compose_client()
    if client is None:
        pytest.skip("no docker compose / docker-compose client installed")
    example = ROOT / "docker" / ".env.example"
    values = env_example(example)
    env = {k: v for k, v in os.environ.items() if k not in values} | {
        "CATALYST_ENV_FILE": str(example), "POSTGRES_PASSWORD": values["POSTGRES_PASSWORD"]}
    out = subprocess.run([*client, "-f", str(ROOT / "docker" / "compose.yaml"), "config"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)["services"]
    for name in APP_SERVICES:
        environ = resolved[name]["environment"]
        assert environ["FLOWER_BASIC_AUTH"] == values["FLOWER_BASIC_AUTH"]
        assert environ["CATALYST_BROKER"] == values["CATALYST_BROKER"]
        assert environ["DATABASE_URL"] == f"postgresql://catalyst:{values['POSTGRES_PASSWORD']}@postgres:5432/catalyst"
    # without an env file compose refuses, instead of starting a stack that has no credentials
    del env["CATALYST_ENV_FILE"]
    env["CATALYST_ENV_FILE"] = str(ROOT / "docker" / "no-such.env")
    refused = subprocess.run([*client, "-f", str(ROOT / "docker" / "compose.yaml"), "config"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0


# -- systemd ---------------------------------------------------------------------------------------------

SERVICES = ("catalyst-worker", "catalyst-exits", "catalyst-scanner", "catalyst-beat", "catalyst-flower",
            "catalyst-metrics")


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read_string((UNITS / name).read_text())
    return parser


def test_systemd_units_restart_cap_memory_read_the_env_file_and_wait_for_migrations():
    for name in SERVICES:
        u = unit(f"{name}.service")
        svc = u["Service"]
        assert svc["Restart"] == "always" and svc["RestartSec"] == "30", name
        assert re.fullmatch(r"\d+[MG]", svc["MemoryMax"]), name
        assert svc["EnvironmentFile"] == "/etc/catalyst/catalyst.env", name
        assert svc["User"] == "catalyst" and svc["WorkingDirectory"] == "/opt/catalyst", name
        assert "catalyst-migrate.service" in u["Unit"]["Requires"].split()
        assert "catalyst-migrate.service" in u["Unit"]["After"].split()
        assert u["Install"]["WantedBy"] == "catalyst.target"
    migrate = unit("catalyst-migrate.service")["Service"]
    assert migrate["Type"] == "oneshot" and migrate["RemainAfterExit"] == "yes"
    assert migrate["ExecStart"].endswith("python -m catalyst db upgrade")
    wanted = unit("catalyst.target")["Unit"]["Wants"].split()
    assert set(wanted) == {f"{n}.service" for n in SERVICES} | {"catalyst-migrate.service"}


def test_systemd_workers_consume_what_the_procfile_workers_consume_and_stop_warm():
    procs = procfile()
    for proc in ("worker", "exits", "scanner"):
        svc = unit(f"catalyst-{proc}.service")["Service"]
        argv = shlex.split(svc["ExecStart"].replace("%%", "%"))
        assert celery_worker(argv) == celery_worker(argv_of(procs[proc])), proc
        assert svc["KillMode"] == "mixed" and svc["KillSignal"] == "SIGTERM", proc  # warm shutdown, main process only
        assert int(svc["TimeoutStopSec"]) >= 30
    beat = unit("catalyst-beat.service")["Service"]["ExecStart"]
    assert beat.endswith("celery -A catalyst beat")
    flower = unit("catalyst-flower.service")["Service"]
    assert "--basic-auth" not in flower["ExecStart"]  # read from the environment, never shown in `ps`
    assert "FLOWER_BASIC_AUTH" in flower["ExecStartPre"]
    pre = shlex.split(flower["ExecStartPre"].replace("$$", "$"))
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    refused = subprocess.run(pre, env=env, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1 and "FLOWER_BASIC_AUTH" in refused.stderr
    allowed = subprocess.run(pre, env=env | {"FLOWER_BASIC_AUTH": "a:b"}, capture_output=True, text=True, timeout=30)
    assert allowed.returncode == 0


def test_systemd_analyze_verifies_the_units(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed")
    for path in UNITS.iterdir():  # point the units at this checkout, where the executables exist
        if path.suffix in (".service", ".target"):
            (tmp_path / path.name).write_text(path.read_text().replace("/opt/catalyst", str(ROOT)))
    out = subprocess.run(["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.iterdir())],
                         env=os.environ | {"SYSTEMD_UNIT_PATH": f"{tmp_path}:"}, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


# -- the health check --------------------------------------------------------------------------------------

def write_beat(url: str, service: str, age: float, status: str = "online", kind: str = "worker") -> None:
    now = datetime.now(UTC)
    with session_scope(url) as s:
        s.merge(ServiceHealth(service_name=service, kind=kind, status=status, hostname=HOST, pid=1,
                              started_at=now - timedelta(hours=1), last_heartbeat=now - timedelta(seconds=age)))


def healthcheck(url: str, *names: str, interval: str = "10") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CATALYST_CONFIG", "REDIS_URL")}
    env |= {"DATABASE_URL": url, "CATALYST_HEARTBEAT_INTERVAL": interval}
    return subprocess.run([sys.executable, "-m", "catalyst.healthcheck", *names], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_healthcheck_passes_on_a_fresh_heartbeat_and_fails_on_a_stale_missing_or_stopped_one(pg_url):
    write_beat(pg_url, f"positions@{HOST}", age=5)
    write_beat(pg_url, f"exits@{HOST}", age=31)  # 3 intervals of 10 s: stale
    write_beat(pg_url, f"scanner@{HOST}", age=1, status="offline")
    write_beat(pg_url, "positions@some-other-host", age=1)
    write_beat(pg_url, f"beat@{HOST}:4242", age=600, status="stopped", kind="beat")  # an earlier beat process
    write_beat(pg_url, f"beat@{HOST}:4343", age=2, status="active", kind="beat")

    fresh = healthcheck(pg_url, "positions")
    assert fresh.returncode == 0, fresh.stdout
    assert healthcheck(pg_url, "beat").returncode == 0
    assert healthcheck(pg_url).returncode == 0  # database only

    stale = healthcheck(pg_url, "exits")
    assert stale.returncode == 1 and "stale" in stale.stdout
    assert healthcheck(pg_url, "exits", interval="20").returncode == 0  # 31 s is fresh at 3 x 20 s
    stopped = healthcheck(pg_url, "scanner")
    assert stopped.returncode == 1 and "offline" in stopped.stdout
    both = healthcheck(pg_url, "positions", "exits")
    assert both.returncode == 1 and f"exits@{HOST}" in both.stdout
    with session_scope(pg_url) as s:
        s.query(ServiceHealth).filter(ServiceHealth.service_name == f"positions@{HOST}").delete()
    missing = healthcheck(pg_url, "positions")  # another host's positions worker is not this container's
    assert missing.returncode == 1 and "no heartbeat" in missing.stdout


def test_healthcheck_fails_when_the_database_does_not_answer_and_never_prints_its_password():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once this closes
    out = healthcheck(f"postgresql://catalyst:s3cret-pw@127.0.0.1:{port}/catalyst")
    assert out.returncode == 1 and out.stdout.startswith("unhealthy: database")
    assert "s3cret-pw" not in out.stdout + out.stderr


@pytest.mark.e2e
def test_healthcheck_follows_a_real_worker_from_start_to_shutdown(pg_url, redis_url, stack, tmp_path):
    env = {"DATABASE_URL": pg_url, "REDIS_URL": redis_url, "CATALYST_VAR_DIR": str(tmp_path),
           "CATALYST_HEARTBEAT_INTERVAL": "1"}
    with environment(env):
        worker = stack.worker(name="positions", queues="monitor,maintenance", concurrency=1)
        wait_for(lambda: healthcheck(pg_url, "positions", interval="1").returncode == 0, 120,
                 interval=1, what="a healthy positions worker")
        assert worker.stop(timeout=30) is not None
        after = healthcheck(pg_url, "positions", interval="1")
        assert after.returncode == 1 and "offline" in after.stdout


def test_healthcheck_judges_staleness_as_the_watchdog_does(pg_url):
    """Where the alert watch (catalyst.alerts) calls a heartbeat stale, the container is unhealthy, and not before."""
    from catalyst import alerts

    limit = alerts.stale_after(20.0).total_seconds()
    write_beat(pg_url, f"positions@{HOST}", age=limit - 25)
    write_beat(pg_url, f"exits@{HOST}", age=limit + 25)
    now = datetime.now(UTC)
    assert not alerts.is_stale(now - timedelta(seconds=limit - 25), now, 20.0)
    assert healthcheck(pg_url, "positions", interval="20").returncode == 0
    assert alerts.is_stale(now - timedelta(seconds=limit + 25), now, 20.0)
    assert healthcheck(pg_url, "exits", interval="20").returncode == 1
