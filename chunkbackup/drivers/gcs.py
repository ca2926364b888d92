"""Cinder's module name for the Google Cloud Storage driver.

``backup_driver = chunkbackup.drivers.gcs.GoogleBackupDriver`` works as
well as ``chunkbackup.drivers.google.GoogleBackupDriver``. The options are
those of ``chunkbackup.drivers.google`` (``[backup_google]``); this module
defines none, so they are listed once.
"""
from chunkbackup.drivers.google import GoogleBackupDriver

__all__ = ['GoogleBackupDriver']
