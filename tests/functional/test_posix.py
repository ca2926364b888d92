"""The conformance suite against the posix driver on a real directory.

The unit run uses 64 KiB objects; this one 1 MiB objects.
"""
from tests.unit import test_conformance_posix as unit


class TestPosixConformance(unit.TestPosixConformance):

    object_size = 1024 * 1024
