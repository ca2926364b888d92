"""Storage failures are classified here, once, for every driver.

A driver's ``classify_error(exc)`` says what a failure of its client
means, as ``(kind, reason)``: ``kind`` is one of KINDS, ``reason`` one line
saying what went wrong and what to do (None: the exception's own type and
text). ``storage_error`` builds the chunkbackup exception from it;
``translated`` applies it around any block of driver code.
"""
import contextlib
import socket
from typing import Iterator, Optional, Tuple, TYPE_CHECKING

from chunkbackup import exception
from chunkbackup.storage import base

if TYPE_CHECKING:
    from chunkbackup.chunked import ChunkedBackupDriver

TRANSIENT = 'transient'                       # worth another attempt
NOT_FOUND = 'not_found'                       # no such object (container)
CONTAINER_NOT_FOUND = 'container_not_found'   # no such container
AUTH = 'auth'                                 # credentials refused
FATAL = 'fatal'                               # anything else
KINDS = (TRANSIENT, NOT_FOUND, CONTAINER_NOT_FOUND, AUTH, FATAL)

Classification = Tuple[str, Optional[str]]

_EXCEPTIONS = {
    TRANSIENT: exception.TransientStorageError,
    NOT_FOUND: exception.StorageObjectNotFound,
    CONTAINER_NOT_FOUND: exception.StorageContainerNotFound,
    AUTH: exception.StorageAuthError,
    FATAL: exception.StorageError,
}


def describe(exc: BaseException) -> str:
    """An exception's type and text, the default reason."""
    return '%s: %s' % (type(exc).__name__, exc)


def classify_default(exc: BaseException) -> Classification:
    """What Python's own exceptions (and ours) mean; drivers extend it."""
    if isinstance(exc, exception.ChunkBackupError):
        for kind in (TRANSIENT, NOT_FOUND, CONTAINER_NOT_FOUND, AUTH):
            if isinstance(exc, _EXCEPTIONS[kind]):
                return kind, exc.kwargs.get('reason')
        return FATAL, None
    if isinstance(exc, FileNotFoundError):
        return NOT_FOUND, None
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
        return TRANSIENT, None
    return FATAL, None


def storage_error(driver: 'ChunkedBackupDriver', exc: BaseException,
                  operation: str, container: str,
                  name: Optional[str] = None) -> exception.StorageError:
    """The chunkbackup exception for a failure of ``driver``'s client.

    ``name`` is None for operations on the container itself: a missing
    thing there is the container.
    """
    kind, reason = driver.classify_error(exc)
    if kind == NOT_FOUND and name is None:
        kind = CONTAINER_NOT_FOUND
    target = (container if kind == CONTAINER_NOT_FOUND
              else base.target_of(container, name))
    cls = _EXCEPTIONS.get(kind, exception.StorageError)
    return cls(operation=operation, target=target,
               reason=reason or describe(exc))


def is_transient(driver: 'ChunkedBackupDriver', exc: BaseException) -> bool:
    """Whether ``driver`` judges a failure of its client worth retrying."""
    return driver.classify_error(exc)[0] == TRANSIENT


@contextlib.contextmanager
def translated(driver: 'ChunkedBackupDriver', operation: str, container: str,
               name: Optional[str] = None) -> Iterator[None]:
    """Failures inside become chunkbackup exceptions, classified once.

    chunkbackup's own exceptions (a driver's configuration advice, an
    invalid name) pass unchanged.
    """
    try:
        yield
    except exception.ChunkBackupError:
        raise
    except Exception as e:
        raise storage_error(driver, e, operation, container, name) from e
