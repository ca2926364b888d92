"""``DriverStore``: the ObjectStore made of a driver's Cinder-style hooks."""
import inspect
from typing import (Callable, Generator, Iterator, List, Optional,
                    TYPE_CHECKING, Union)

from chunkbackup import exception
from chunkbackup import names
from chunkbackup.storage import base
from chunkbackup.storage import errors

if TYPE_CHECKING:
    from chunkbackup.chunked import ChunkedBackupDriver


class _ProducerFailed(BaseException):
    """Carries a failure of the caller's producer through the writer.

    The writer must see a failure (so it stores nothing), but it is not a
    storage failure: a BaseException, so no classification catches it, and
    the original is raised to the caller unchanged.
    """

    def __init__(self, original: BaseException):
        super().__init__(original)
        self.original = original


def _chunks_of(produce: base.Produce
               ) -> Iterator[Union[bytes, memoryview]]:
    try:
        yield from produce()
    except Exception as e:
        raise _ProducerFailed(e) from e


def reads_in_pieces(read: Callable[..., bytes]) -> bool:
    """Whether a reader's ``read`` takes a size (a file's does)."""
    try:
        parameters = inspect.signature(read).parameters.values()
    except (TypeError, ValueError):
        return True  # built-in file objects: read(size=-1)
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                          p.VAR_POSITIONAL) for p in parameters)


class DriverStore(base.ObjectStore):
    """Adapts a driver's hooks to ``ObjectStore``.

    Names are checked here, once for all drivers. Failures leave as
    chunkbackup exceptions built by ``errors.storage_error`` from the
    driver's ``classify_error``; chunkbackup's own pass unchanged.

    Optional hooks, used when the driver has them:

    - ``put_object_stream(container, object_name, chunks,
      extra_metadata=None)``: store an iterator of chunks as one object,
      without holding it whole (streams otherwise go through
      ``get_object_writer``, which a remote store buffers);
    - ``get_object_range(container, object_name, offset, length,
      extra_metadata=None) -> bytes`` and ``get_object_size(container,
      object_name, extra_metadata=None) -> int``: both, or ranges are
      read from the object's start.
    """

    def __init__(self, driver: 'ChunkedBackupDriver') -> None:
        self.driver = driver

    @staticmethod
    def _check(container: str, name: Optional[str] = None) -> None:
        names.check_relative('container', container)
        if name is not None:
            names.check_relative('object name', name)

    def ensure_container(self, container: str) -> None:
        self._check(container)
        with errors.translated(self.driver, 'put_container', container):
            self.driver.put_container(container)

    def put(self, container: str, name: str, body: bytes,
            extra_metadata: Optional[dict] = None) -> None:
        self.put_stream(container, name, lambda: (body,), extra_metadata)

    def put_stream(self, container: str, name: str, produce: base.Produce,
                   extra_metadata: Optional[dict] = None) -> None:
        self._check(container, name)
        put_object_stream = getattr(self.driver, 'put_object_stream', None)
        try:
            with errors.translated(self.driver, 'put', container, name):
                if put_object_stream is not None:
                    put_object_stream(container, name, _chunks_of(produce),
                                      extra_metadata=extra_metadata)
                    return
                with self.driver.get_object_writer(
                        container, name,
                        extra_metadata=extra_metadata) as writer:
                    for chunk in _chunks_of(produce):
                        writer.write(chunk)
        except _ProducerFailed as e:
            raise e.original

    def get(self, container: str, name: str,
            extra_metadata: Optional[dict] = None) -> bytes:
        self._check(container, name)
        with errors.translated(self.driver, 'get', container, name):
            with self.driver.get_object_reader(
                    container, name, extra_metadata=extra_metadata) as reader:
                return reader.read()

    def get_stream(self, container: str, name: str,
                   extra_metadata: Optional[dict] = None,
                   chunk_size: int = base.DEFAULT_CHUNK_SIZE
                   ) -> Generator[bytes, None, None]:
        self._check(container, name)
        with errors.translated(self.driver, 'get', container, name):
            with self.driver.get_object_reader(
                    container, name, extra_metadata=extra_metadata) as reader:
                if not reads_in_pieces(reader.read):
                    # A reader without read(size): one whole body.
                    body = reader.read()
                    if body:
                        yield body
                    return
                while True:
                    chunk = reader.read(chunk_size)
                    if not chunk:
                        return
                    yield chunk

    @property
    def supports_ranges(self) -> bool:
        return (getattr(self.driver, 'get_object_range', None) is not None and
                getattr(self.driver, 'get_object_size', None) is not None)

    def get_range(self, container: str, name: str, offset: int,
                  length: int, extra_metadata: Optional[dict] = None
                  ) -> bytes:
        if not self.supports_ranges:
            return super().get_range(container, name, offset, length,
                                     extra_metadata)
        self._check(container, name)
        base.check_range(offset, length)
        if length == 0:
            # Nothing to read, but a missing object is still missing.
            self.object_size(container, name, extra_metadata)
            return b''
        with errors.translated(self.driver, 'get', container, name):
            body = getattr(self.driver, 'get_object_range')(
                container, name, offset, length,
                extra_metadata=extra_metadata)
        if len(body) > length:
            raise exception.StorageError(
                operation='get', target=base.target_of(container, name),
                reason='asked for %d bytes at offset %d, the store sent %d'
                       % (length, offset, len(body)))
        return body

    def object_size(self, container: str, name: str,
                    extra_metadata: Optional[dict] = None) -> int:
        if not self.supports_ranges:
            return super().object_size(container, name, extra_metadata)
        self._check(container, name)
        with errors.translated(self.driver, 'head', container, name):
            return int(getattr(self.driver, 'get_object_size')(
                container, name, extra_metadata=extra_metadata))

    def list(self, container: str, prefix: str) -> List[str]:
        self._check(container)
        with errors.translated(self.driver, 'list', container):
            return list(self.driver.get_container_entries(container, prefix))

    def copy(self, container: str, name: str, dest_container: str,
             dest_name: str) -> None:
        """The driver's server-side ``copy_object``, else via the client."""
        self._check(container, name)
        self._check(dest_container, dest_name)
        with errors.translated(self.driver, 'copy', container, name):
            copied = self.driver.copy_object(container, name, dest_container,
                                             dest_name)
        if not copied:
            super().copy(container, name, dest_container, dest_name)

    def delete(self, container: str, name: str) -> None:
        self._check(container, name)
        try:
            with errors.translated(self.driver, 'delete', container, name):
                self.driver.delete_object(container, name)
        except exception.StorageObjectNotFound:
            pass
