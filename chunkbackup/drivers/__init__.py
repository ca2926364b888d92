"""Storage drivers: each names things and moves object bytes, nothing more."""

# Where each driver declares its options (GROUP and OPTS). Drivers whose
# client libraries are slow to import (boto3, google-cloud-storage,
# swiftclient) keep them in a light sibling module, so every command can
# check the whole configuration at start without importing every client
# library (that cost each command half a second). tests/unit/test_opts.py
# checks that this list names every driver module's group.
OPTION_MODULES = (
    'chunkbackup.drivers.posix',
    'chunkbackup.drivers.swift_options',
    'chunkbackup.drivers.s3_options',
    'chunkbackup.drivers.google_options',
)
