"""Only volumes are backed up: character devices, FIFOs and sockets are
refused before they are read (issue 15, item 2)."""
import io
import os
import socket
import stat

import pytest

from chunkbackup.engine import sources
from chunkbackup import exception


@pytest.mark.parametrize('path', ['/dev/zero', '/dev/null'])
def test_character_devices_are_refused(path):
    with open(path, 'rb') as f:
        with pytest.raises(exception.NotAVolume,
                           match='character device.*regular file, a '
                                 'block device or an NBD export'):
            sources.open_source(f, skip_holes=True)


def test_a_pipe_with_a_writer_is_refused():
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b'x' * 4096)
    with os.fdopen(read_fd, 'rb') as f, os.fdopen(write_fd, 'wb'):
        with pytest.raises(exception.NotAVolume, match='a FIFO'):
            sources.open_source(f, skip_holes=True)


def test_a_socket_is_refused():
    a, b = socket.socketpair()
    with a, b, a.makefile('rb') as f:
        with pytest.raises(exception.NotAVolume, match='a socket'):
            sources.open_source(f, skip_holes=True)


def test_volumes_are_accepted(tmp_path):
    path = tmp_path / 'vol'
    path.write_bytes(b'v' * 5000)
    with open(path, 'rb') as f:
        source = sources.open_source(f, skip_holes=True)
        assert isinstance(source, sources.FileSource) and source.size == 5000
    stream = sources.open_source(io.BytesIO(b'abc'), skip_holes=True)
    assert stream.size == 3


def test_check_volume_mode_names_what_it_refused(tmp_path):
    os.mkfifo(tmp_path / 'fifo')
    mode = os.stat(tmp_path / 'fifo').st_mode
    with pytest.raises(exception.NotAVolume) as info:
        sources.check_volume_mode(mode, 'volume %s' % (tmp_path / 'fifo'))
    assert str(info.value).startswith('volume %s is a FIFO, not a volume'
                                      % (tmp_path / 'fifo'))
    sources.check_volume_mode(stat.S_IFREG | 0o600, 'a regular file')
    sources.check_volume_mode(stat.S_IFBLK | 0o600, 'a block device')
