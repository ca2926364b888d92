from oslo_config import cfg


def pytest_configure(config):
    # Parse an empty command line once so options can be read and overridden.
    cfg.CONF([], project='chunkbackup', default_config_files=[],
             default_config_dirs=[])
