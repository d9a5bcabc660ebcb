import os

import pytest

from services import start_mlflow, start_prefect, start_s3

for _name, _value in {"DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false",
                      "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}.items():
    os.environ.setdefault(_name, _value)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = start_mlflow(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    server = start_prefect(tmp_path_factory.mktemp("prefect"))
    yield server
    server.stop()
