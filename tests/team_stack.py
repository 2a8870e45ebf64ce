"""The team stack of team/compose.yaml, started on loopback in temporary folders.

PostgreSQL runs from its own binaries (initdb, pg_ctl) with team/postgres-init.sql; moto's S3 API
server stands in for MinIO; `mlflow server` and `prefect server start` run with the command and
environment of their compose service, the ``${...}`` variables set to loopback hosts, free ports
and fresh random secrets. The "Team setup" commands are read from its docs page, docs/team.md, itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TEAM = ROOT / "team"
COMPOSE = TEAM / "compose.yaml"
BIN = Path(sys.executable).parent
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: ``${NAME}``, ``${NAME:-default}`` (also when empty) and ``$$``."""

    def value(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if env.get(name):
            return env[name]
        if default is None:
            raise KeyError(f"${{{name}}} has no value and no default")
        return default

    return _VARIABLE.sub(value, text)


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def service(name: str, env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """A compose service's command and environment, interpolated with ``env``."""
    spec = compose()["services"][name]
    command = spec["command"]
    command = shlex.split(command) if isinstance(command, str) else [str(part) for part in command]
    environment = {key: expand(str(value), env) for key, value in (spec.get("environment") or {}).items()}
    return [expand(part, env) for part in command], environment


def env_example() -> dict[str, str]:
    """team/env.example: the variables a team copies to team/.env."""
    pairs = (line.split("=", 1) for line in (TEAM / "env.example").read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs if not key.lstrip().startswith("#")}


def readme_commands() -> list[str]:
    """The shell lines of the "Team setup" page, docs/team.md (code blocks, comments dropped)."""
    text = (ROOT / "docs" / "team.md").read_text()
    section = text.split("# Team setup\n", 1)[1]  # the whole page after its title
    lines = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", section, flags=re.S):
        lines += [line.split(" #", 1)[0].strip() for line in block.splitlines() if line.strip()]
    return [line for line in lines if line and not line.startswith("#")]


def documented(prefix: str, env: Mapping[str, str]) -> list[str]:
    """The one "Team setup" command (docs/team.md) that starts with ``prefix``, interpolated with ``env``, as argv."""
    found = [line for line in readme_commands() if line.startswith(prefix)]
    assert len(found) == 1, f"docs/team.md (Team setup) has {len(found)} commands starting with {prefix!r}: {found}"
    return shlex.split(expand(found[0], env))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"{url}: the server exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            assert time.monotonic() < deadline, f"{url} did not answer in {timeout:.0f}s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)


@contextlib.contextmanager
def server(command: list[str], env: Mapping[str, str], health: str, log: Path) -> Iterator[subprocess.Popen]:
    """A server process (and its workers, one process group) until the block ends."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **env}
    with log.open("w") as out:
        process = subprocess.Popen(command, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(health, process, log)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _postgres_bin() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if not versions:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: install them (Debian: apt install "
            "postgresql) or put their bin/ folder on PATH"
        )
    return versions[-1].parent


@dataclass(frozen=True)
class TeamEnv:
    """The compose variables of one test session, and the folder its servers keep their files in."""

    values: dict[str, str]
    folder: Path

    @property
    def secrets(self) -> list[str]:
        return [self.values["POSTGRES_PASSWORD"], self.values["S3_SECRET_KEY"]]

    @property
    def s3_env(self) -> dict[str, str]:
        """What an S3 client (dvc, boto3) reads its endpoint-less credentials from."""
        return {
            "AWS_ACCESS_KEY_ID": self.values["S3_ACCESS_KEY"],
            "AWS_SECRET_ACCESS_KEY": self.values["S3_SECRET_KEY"],
        }


def team_env() -> TeamEnv:
    """env.example with fresh secrets, every host on loopback and free ports."""
    folder = Path(tempfile.mkdtemp(prefix="nectargan-team-"))  # not under pytest's root-only 0700 folder
    folder.chmod(0o755)
    values = env_example() | {
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "S3_SECRET_KEY": secrets.token_hex(16),
        "BIND_HOST": "127.0.0.1",
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(free_port()),
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(free_port()),
        "MLFLOW_WORKERS": "1",
        "PREFECT_HOST": "127.0.0.1",
        "PREFECT_PORT": str(free_port()),
        "S3_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "NECTARGAN_PROJECT_DIR": "",
    }
    return TeamEnv(values, folder)


class Postgres:
    """A throwaway cluster on loopback (team/postgres-init.sql applied, as the postgres image does),
    which a test stops and starts again on the same port and data: the database behind the servers
    restarting in the middle of a run."""

    def __init__(self, env: TeamEnv) -> None:
        self.env, self.binaries, self.data = env, _postgres_bin(), env.folder / "postgres"
        self.as_user: dict = {}

    def _run(self, *args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, **self.as_user)

    def init(self) -> None:
        self.data.mkdir()
        password = self.env.folder / "pgpass"
        password.write_text(self.env.values["POSTGRES_PASSWORD"])
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            user = "postgres" if _user_exists("postgres") else "nobody"
            shutil.chown(self.data, user)
            shutil.chown(password, user)
            self.as_user = {"user": user}
        self._run(
            str(self.binaries / "initdb"), "-D", str(self.data), "-U", self.env.values["POSTGRES_USER"],
            "--pwfile", str(password), "-A", "scram-sha-256", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.env.values['POSTGRES_PORT']} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.data / "server.log")
        self._run(str(self.binaries / "pg_ctl"), "-D", str(self.data), "-l", log, "-o", options, "-w", "start")

    def stop(self) -> None:
        """pg_ctl's fast shutdown (what `docker compose stop postgres` sends): open sessions are ended."""
        self._run(str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")


@contextlib.contextmanager
def postgres(env: TeamEnv) -> Iterator[Postgres]:
    """The cluster, running until the block ends."""
    import psycopg

    cluster = Postgres(env)
    cluster.init()
    cluster.start()
    try:
        dsn = f"host=127.0.0.1 port={env.values['POSTGRES_PORT']} dbname=postgres user={env.values['POSTGRES_USER']}"
        with psycopg.connect(dsn, password=env.values["POSTGRES_PASSWORD"], autocommit=True) as connection:
            for statement in _statements((TEAM / "postgres-init.sql").read_text()):
                connection.execute(statement)
        yield cluster
    finally:
        cluster.stop()


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _statements(sql: str) -> list[str]:
    text = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [statement.strip() for statement in text.split(";") if statement.strip()]


def bucket_names() -> list[str]:
    """The buckets the compose `buckets` service makes (its `mc mb` arguments)."""
    command = " ".join(compose()["services"]["buckets"]["command"])
    made = command.split("mc mb", 1)[1].split()
    return [name.split("/", 1)[1] for name in made if name.startswith("s3/")]


@contextlib.contextmanager
def s3(env: TeamEnv) -> Iterator[None]:
    """moto's S3 API server (in place of the compose file's MinIO) with the compose buckets."""
    import boto3

    endpoint = env.values["S3_ENDPOINT"]
    port = endpoint.rsplit(":", 1)[1]
    command = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", port]
    with server(command, {}, f"{endpoint}/moto-api/", env.folder / "s3.log"):
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_boto_keys(env))
        for bucket in bucket_names():
            client.create_bucket(Bucket=expand(bucket, env.values))
        yield


def _boto_keys(env: TeamEnv) -> dict[str, str]:
    return {"aws_access_key_id": env.values["S3_ACCESS_KEY"], "aws_secret_access_key": env.values["S3_SECRET_KEY"]}


def s3_objects(env: TeamEnv, bucket: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=env.values["S3_ENDPOINT"], region_name="us-east-1", **_boto_keys(env))
    keys, token = [], {}
    while True:
        page = client.list_objects_v2(Bucket=bucket, **token)
        keys += [item["Key"] for item in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return keys
        token = {"ContinuationToken": page["NextContinuationToken"]}


@contextlib.contextmanager
def mlflow_server(env: TeamEnv) -> Iterator[str]:
    """The compose `mlflow` service: runs in PostgreSQL, artifacts proxied to S3. Yields its URL."""
    command, environment = service("mlflow", env.values)
    url = f"http://127.0.0.1:{env.values['MLFLOW_PORT']}"
    with server(command, environment, f"{url}/health", env.folder / "mlflow.log"):
        yield url


@contextlib.contextmanager
def prefect_server(env: TeamEnv) -> Iterator[PrefectServer]:
    """The compose `prefect` service on the PostgreSQL database until the block ends."""
    prefect = PrefectServer(env)
    try:
        prefect.start()
        yield prefect
    finally:
        prefect.stop()


class Restartable:
    """A server in a process group of its own, which a test stops and starts again on the same port
    and store (a restart in the middle of a run); stop() is docker's: SIGTERM, SIGKILL after ``grace``."""

    url: str
    log: Path
    grace: float = 30

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {}

    def start(self) -> None:
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **self.environment()}
        with self.log.open("a") as out:
            self.process = subprocess.Popen(
                self.command(), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for(f"{self.url}/health", self.process, self.log)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (the class's by default; 0: kill -9 at once,
        a crash, which ends the server's answers at a known moment)."""
        if self.process is None or self.process.poll() is not None:
            return
        wait = self.grace if grace is None else grace
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM if wait > 0 else signal.SIGKILL)
        try:
            self.process.wait(timeout=wait or None)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class PrefectServer(Restartable):
    """The compose `prefect` service (`prefect server start`) on the PostgreSQL database; ``api`` is
    its API URL. A restart keeps the port and the database, as `docker compose restart prefect` does."""

    grace = 10  # docker stop's default

    def __init__(self, env: TeamEnv) -> None:
        super().__init__()
        self._command, self._environment = service("prefect", env.values)
        self._environment["PREFECT_HOME"] = str(env.folder / "prefect-server-home")
        self.api = f"http://127.0.0.1:{env.values['PREFECT_PORT']}/api"
        self.url, self.log = self.api, env.folder / "prefect.log"

    def command(self) -> list[str]:
        return self._command

    def environment(self) -> dict[str, str]:
        return self._environment


class PlainMlflow(Restartable):
    """`mlflow server` on an SQLite file in ``folder`` (artifacts beside it) on a loopback port, which a
    test stops and starts again on the same port and store (a server restart in the middle of a run)."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "mlflow.log"

    def command(self) -> list[str]:
        store = f"sqlite:///{self.folder / 'mlflow.db'}"
        return [
            str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", store, "--artifacts-destination", str(self.folder / "artifacts"),
        ]  # fmt: skip
