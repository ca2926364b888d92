"""``DriverStore``: the ObjectStore made of a driver's Cinder-style hooks."""
import inspect
from typing import Callable, Generator, Iterator, List, Optional, TYPE_CHECKING

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


def _chunks_of(produce: base.Produce) -> Iterator[bytes]:
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
        try:
            with errors.translated(self.driver, 'put', container, name):
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

    def list(self, container: str, prefix: str) -> List[str]:
        self._check(container)
        with errors.translated(self.driver, 'list', container):
            return list(self.driver.get_container_entries(container, prefix))

    def delete(self, container: str, name: str) -> None:
        self._check(container, name)
        try:
            with errors.translated(self.driver, 'delete', container, name):
                self.driver.delete_object(container, name)
        except exception.StorageObjectNotFound:
            pass
