"""Test support shipped with chunkbackup: volume generators and the driver
conformance suite (``chunkbackup.testing.conformance``)."""
