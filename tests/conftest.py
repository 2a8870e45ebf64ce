import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest

from nectargan_core.data.sample import generate_sample_dataset
from nectargan_core.settings import SampleDataSettings

from .helpers import tiny_settings

# Property-based tests draw the same examples on every machine (CI reproduces a local failure) and keep
# no example database. The fuzz tests check each example's CPU time themselves (under a second): a
# wall-clock deadline that tight flakes when other jobs share the CPUs, so it only catches a stall here.
# They reuse one folder per test (tmp_path) and empty it per example: no function-scoped fixture check.
hypothesis.settings.register_profile(
    "nectargan",
    derandomize=True,
    database=None,
    deadline=10_000,
    print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
hypothesis.settings.load_profile("nectargan")


@pytest.fixture(scope="session", autouse=True)
def away_from_the_checkout(tmp_path_factory) -> Iterator[Path]:
    """Every test starts in an empty folder with no team tracking server named: relative paths of the
    settings (outputs/, .cache/decoded, mlflow.db) never reach what a `make run` left in the checkout."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("cwd")
        patch.chdir(folder)
        patch.delenv("NECTARGAN_TRACKING_URI", raising=False)
        yield folder


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """A tiny copy of the bundled sample dataset: 64 px halves, 6 train / 2 val / 2 test pairs."""
    root = tmp_path_factory.mktemp("sample")
    generate_sample_dataset(SampleDataSettings(out=root, size=64, train=6, val=2, test=2, seed=0))
    return root


@pytest.fixture(scope="session")
def finished_project(sample_root, tmp_path_factory) -> Path:
    """A project folder as `nectargan train` leaves it: its own dataset copy (data/), params.yaml with
    relative paths, a finished one-epoch run in outputs/train registered in the embedded MLflow store.

    Trained once per session; read it only. A test that changes it works on a copy
    (``shutil.copytree(finished_project, tmp_path / "p", symlinks=True)``): copying beats training.
    """
    from nectargan_core.cli import main

    base = tmp_path_factory.mktemp("finished-project")
    shutil.copytree(sample_root, base / "data")
    settings = tiny_settings(Path("data"), Path("outputs/train"), **{"generator.epochs": 1})
    (base / "params.yaml").write_text(json.dumps(settings.model_dump(mode="json")))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)
        assert main(["train"]) == 0
    return base


# The team stack (team/compose.yaml) on loopback, started once per session by the tests that need it.


@pytest.fixture(scope="session")
def team_env():
    from .team_stack import team_env as make

    env = make()
    yield env
    shutil.rmtree(env.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def team_postgres(team_env):
    """The PostgreSQL cluster (a team_stack.Postgres: stop/start for a restart)."""
    from .team_stack import postgres

    with postgres(team_env) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def team_postgres_db(team_postgres):
    yield team_postgres.env


@pytest.fixture(scope="session")
def team_s3_server(team_env):
    from .team_stack import s3

    with s3(team_env):
        yield team_env


@pytest.fixture(scope="session")
def team_mlflow(team_postgres_db, team_s3_server):
    """The URL of `mlflow server` on PostgreSQL with S3 artifacts."""
    from .team_stack import mlflow_server

    with mlflow_server(team_postgres_db) as url:
        yield url


@pytest.fixture(scope="session")
def team_prefect(team_postgres_db):
    """`prefect server start` on PostgreSQL (a PrefectServer: ``.api``, and stop/start for a restart)."""
    from .team_stack import prefect_server

    with prefect_server(team_postgres_db) as prefect:
        yield prefect
