"""Every object a configured store holds, copied to a directory.

Run in a child process (``python -m tests.functional.storedump CONFIG
OUT``) so the test's own process keeps a clean oslo.config: the driver of
the config lists its container (the posix driver its whole tree) and each
object is written to OUT under a flattened name. Tests then search every
stored byte.
"""
import os
import sys
import types

from oslo_config import cfg


def main(config: str, out: str) -> int:
    from chunkbackup import operations
    from chunkbackup import opts  # noqa: F401  (registers [chunkbackup])

    cfg.CONF(['--config-file', config], project='chunkbackup')
    driver = operations.load_driver()
    os.makedirs(out, exist_ok=True)
    count = 0
    driver_name = cfg.CONF.chunkbackup.driver
    if driver_name == 'posix':
        root = cfg.CONF.backup_posix.path
        for top, _, files in os.walk(root):
            for name in files:
                with open(os.path.join(top, name), 'rb') as f:
                    body = f.read()
                _write(out, os.path.relpath(os.path.join(top, name), root),
                       body)
                count += 1
    else:
        anonymous = types.SimpleNamespace(id='0' * 36, volume_id='0',
                                          container=None)
        container = driver._container_of(anonymous)
        for name in driver.store.list(container, ''):
            _write(out, name, bytes(driver.store.get(container, name)))
            count += 1
    print(count)
    return 0


def _write(out: str, name: str, body: bytes) -> None:
    with open(os.path.join(out, name.replace('/', '%')), 'wb') as f:
        f.write(body)


if __name__ == '__main__':
    sys.exit(main(sys.argv[1], sys.argv[2]))
