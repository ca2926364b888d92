from oslo_config import cfg
import pytest


def pytest_configure(config):
    # Parse an empty command line once so options can be read and overridden.
    cfg.CONF([], project='chunkbackup', default_config_files=[],
             default_config_dirs=[])


@pytest.fixture
def overrides(request):
    """``overrides(name, value, group=...)``; all are cleared after the test.

    The default group is the test module's ``OVERRIDE_GROUP``.
    """
    default = getattr(request.module, 'OVERRIDE_GROUP', 'chunkbackup')
    done = []

    def override(name, value, group=default):
        cfg.CONF.set_override(name, value, group)
        done.append((name, group))

    yield override
    for name, group in reversed(done):
        cfg.CONF.clear_override(name, group)
