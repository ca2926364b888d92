"""A posix driver whose copies and deletes take a little time, so that a
SIGKILL at a random moment lands inside a fold or a synthetic full.
"""
import os
import time

from chunkbackup.drivers import posix

DELAY = float(os.environ.get('CHUNKBACKUP_TEST_OBJECT_DELAY', '0.01'))


class SlowPosixDriver(posix.PosixBackupDriver):

    def copy_object(self, container: str, object_name: str,
                    dest_container: str, dest_name: str) -> bool:
        time.sleep(DELAY)
        return super().copy_object(container, object_name, dest_container,
                                   dest_name)

    def delete_object(self, container: str, object_name: str) -> None:
        time.sleep(DELAY)
        super().delete_object(container, object_name)
