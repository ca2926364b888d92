"""Session-wide real servers for the functional tests.

Each fixture starts its server once per test session on 127.0.0.1 and stops
exactly what it started. A server that cannot start fails the tests that use
it (never a skip).
"""
import pytest


@pytest.fixture(scope='session')
def swift_server():
    """A Swift all-in-one (tempauth v1, s3api) from pip `swift`."""
    from tests.functional.servers import swift
    with swift.running_swift() as server:
        yield server


@pytest.fixture(scope='session')
def gcs_server():
    """gcp-storage-emulator on 127.0.0.1."""
    from tests.functional.servers import gcs
    with gcs.running_gcs() as server:
        yield server


@pytest.fixture(scope='session')
def moto_server():
    """moto's S3 server on 127.0.0.1."""
    from tests.functional.servers import moto
    with moto.running_moto() as server:
        yield server


@pytest.fixture(scope='session')
def barbican_server():
    """OpenStack Barbican from pip `barbican` (SQLite, simple_crypto).

    No keystone: its unauthenticated-context pipeline.
    """
    from tests.functional.servers import barbican
    with barbican.running_barbican() as server:
        yield server
