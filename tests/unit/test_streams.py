"""Streams (chunkbackup.streams) and restoring part of a volume
(plan.restrict, restore.RangeSink).
"""
import io
import os

import pytest

from chunkbackup.engine import plan as restore_plan
from chunkbackup.engine import restore
from chunkbackup import exception
from chunkbackup import streams


@pytest.mark.parametrize('text,value', [
    ('4096', 4096), ('64K', 65536), ('512M', 512 * 2 ** 20),
    ('1G', 2 ** 30), ('2GiB', 2 ** 31), ('3 t', 3 * 2 ** 40)])
def test_sizes(text, value):
    assert streams.parse_size(text) == value


@pytest.mark.parametrize('text', ['', '1.5G', '-1', '1Q', 'G'])
def test_bad_sizes(text):
    with pytest.raises(ValueError, match='is not a size'):
        streams.parse_size(text)


def test_the_spool_holds_the_stream_with_zeros_as_holes(tmp_path):
    data = os.urandom(100) + bytes(3 * 2 ** 20) + os.urandom(5000)
    with streams.spooled_stdin(len(data), str(tmp_path),
                               io.BytesIO(data)) as path:
        with open(path, 'rb') as f:
            assert f.read() == data
        # The zeros take (almost) no blocks.
        assert os.stat(path).st_blocks * 512 < 2 ** 20
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('given,size,message', [
    (b'x' * 10, 20, 'ended after 10 bytes'),
    (b'x' * 30, 20, 'holds more than the --size of 20')])
def test_a_stream_of_the_wrong_size_is_refused(tmp_path, given, size,
                                               message):
    with pytest.raises(streams.StreamError, match=message):
        with streams.spooled_stdin(size, str(tmp_path), io.BytesIO(given)):
            pass
    assert os.listdir(tmp_path) == []


class _Recorder(restore.Sink):
    def __init__(self):
        self.writes, self.zeros, self.sizes = [], [], []

    def write(self, offset, data):
        self.writes.append((offset, bytes(data)))

    def zero(self, offset, length):
        self.zeros.append((offset, length))

    def prepare(self, size):
        self.sizes.append(size)


def test_a_range_sink_writes_only_the_range_from_the_start():
    inner = _Recorder()
    sink = restore.RangeSink(inner, 100, 50)
    sink.prepare(10 ** 6)
    sink.write(0, b'a' * 120)       # 100..120 kept
    sink.write(140, b'b' * 30)      # 140..150 kept
    sink.write(200, b'c' * 10)      # outside
    sink.zero(120, 20)
    assert inner.sizes == [50]
    assert inner.writes == [(0, b'a' * 20), (40, b'b' * 10)]
    assert inner.zeros == [(20, 20)]


def _plan(size=10 * 4096, bs=4096):
    fetches = [restore_plan.Fetch(None, None, [(0, 4 * bs)]),
               restore_plan.Fetch(None, None, [(4 * bs, 8 * bs)])]
    return restore_plan.RestorePlan(size, bs, None, fetches,
                                    [(8 * bs, size)], [])


def test_restrict_keeps_the_objects_of_the_range_in_whole_blocks():
    plan = restore_plan.restrict(_plan(), 5000, 3000)
    assert [f.pieces for f in plan.fetches] == [[(4096, 8192)]]
    assert plan.zero_runs == []
    plan = restore_plan.restrict(_plan(), 15000, 20000)
    assert [f.pieces for f in plan.fetches] == [[(12288, 16384)],
                                                [(16384, 32768)]]
    assert plan.zero_runs == [(32768, 36864)]


@pytest.mark.parametrize('offset,length', [(0, 0), (-1, 10),
                                           (40000, 1000), (0, 40961)])
def test_restrict_refuses_a_range_outside_the_volume(offset, length):
    with pytest.raises(exception.InvalidBackup, match='not inside'):
        restore_plan.restrict(_plan(), offset, length)
