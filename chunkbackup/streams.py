"""Volumes from standard input, restores to standard output, sizes.

The engine reads a volume where it likes, more than once (objects in
parallel, an incremental's changed runs twice, a retried upload again),
and restores objects out of order. A pipe allows neither, so both ends
go through a sparse temporary file in ``[chunkbackup] temp_dir``: standard
input is copied into it, all-zero blocks left as holes, and backed up as
a file; a restore to standard output is made into it and then copied out
in order. Memory stays that of a file backup or restore; the disk space
is the data's, never the holes'.
"""
import contextlib
import os
import re
import sys
import tempfile
from typing import BinaryIO, Iterator, Optional

from chunkbackup import exception

STDIO = '-'
CHUNK = 2 ** 20
# All-zero runs of this size are left as holes in the spool.
HOLE = 64 * 1024
_ZEROS = bytes(CHUNK)
_SIZE = re.compile(r'^\s*(\d+)\s*([KMGTP]?)(i?B?)\s*$', re.I)
_UNITS = {'': 1, 'K': 2 ** 10, 'M': 2 ** 20, 'G': 2 ** 30, 'T': 2 ** 40,
          'P': 2 ** 50}


class StreamError(exception.ChunkBackupError):
    msg_fmt = "%(reason)s"


def parse_size(text: str) -> int:
    """Bytes from ``4096``, ``64K``, ``512M``, ``1G``, ``2GiB`` (powers of
    two), for --size, --offset and --length.
    """
    match = _SIZE.match(text or '')
    if not match:
        raise ValueError('%r is not a size (bytes, or a number with K, M, '
                         'G, T or P: 512M, 1G)' % text)
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def _temporary(directory: Optional[str], prefix: str):
    try:
        return tempfile.mkstemp(prefix=prefix, dir=directory)
    except OSError as e:
        raise StreamError(
            reason='cannot make a temporary file in %s (%s); set '
                   '[chunkbackup] temp_dir to a directory with room for the '
                   'data' % (directory or tempfile.gettempdir(), e.strerror))


@contextlib.contextmanager
def spooled_stdin(size: int, directory: Optional[str],
                  stream: Optional[BinaryIO] = None) -> Iterator[str]:
    """A sparse file holding exactly ``size`` bytes of standard input.

    Removed when the block ends, whatever happens. Standard input that
    ends early or holds more than ``size`` bytes is an error, raised
    before anything is backed up.
    """
    stream = stream if stream is not None else sys.stdin.buffer
    fd, path = _temporary(directory, 'chunkbackup-stdin-')
    try:
        with os.fdopen(fd, 'r+b') as spool:
            got = _copy_sparse(stream, spool, size)
            if got < size:
                raise StreamError(
                    reason='standard input ended after %d bytes, before the '
                           '--size of %d bytes: nothing was backed up; give '
                           'the size the stream has' % (got, size))
            spool.truncate(size)
            spool.flush()
        yield path
    finally:
        os.unlink(path)


def _copy_sparse(stream: BinaryIO, spool: BinaryIO, size: int) -> int:
    got = 0
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            return got
        if got + len(chunk) > size:
            raise StreamError(
                reason='standard input holds more than the --size of %d '
                       'bytes: nothing was backed up; give the size the '
                       'stream has' % size)
        view = memoryview(chunk)
        for start in range(0, len(chunk), HOLE):
            part = view[start:start + HOLE]
            if _ZEROS.startswith(part):
                spool.seek(len(part), os.SEEK_CUR)  # a hole
            else:
                spool.write(part)
        got += len(chunk)


def refuse_terminal(out: BinaryIO) -> None:
    """Volume bytes to a terminal are a mistake: say so before any."""
    try:
        terminal = os.isatty(out.fileno())
    except (AttributeError, OSError, ValueError):
        terminal = False
    if terminal:
        raise StreamError(
            reason='standard output is a terminal: redirect it to a file or '
                   'a pipe (chunkbackup backup-restore ID - > volume.img)')


@contextlib.contextmanager
def restore_file(directory: Optional[str]) -> Iterator[str]:
    """An empty temporary file for a restore, removed afterwards."""
    fd, path = _temporary(directory, 'chunkbackup-restore-')
    os.close(fd)
    try:
        yield path
    finally:
        os.unlink(path)


def copy_out(path: str, out: BinaryIO) -> int:
    """Write the file to ``out`` in order (holes as zeros); bytes written."""
    written = 0
    with open(path, 'rb') as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            out.write(chunk)
            written += len(chunk)
    out.flush()
    return written
