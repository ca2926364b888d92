"""The ObjectStore interface and the forwarding base of every wrapper."""
from typing import (Callable, Generator, Iterable, Iterator, List, Optional,
                    Union)

MiB = 2 ** 20
DEFAULT_CHUNK_SIZE = 8 * MiB

# ``produce()`` returns a fresh iterator of the body's chunks each time it
# is called, so a retry can send the body again.
Produce = Callable[[], Iterable[Union[bytes, memoryview]]]


class ObjectStore:
    """Seven operations on named objects, the engine's only way to storage.

    Subclasses implement the first five; ``put_stream`` and ``get_stream``
    default to whole-body ``put`` and ``get`` so a five-method store
    still works (holding the body in memory). Ranged reads
    (``get_range``, ``object_size``) are there for every store, but only
    a store whose ``supports_ranges`` is True answers them without
    reading the object from its start: the engine asks first.
    """

    def ensure_container(self, container: str) -> None:
        """Create the container if it does not exist."""
        raise NotImplementedError

    def put(self, container: str, name: str, body: bytes,
            extra_metadata: Optional[dict] = None) -> None:
        """Store ``body``; the object appears only once complete."""
        raise NotImplementedError

    def get(self, container: str, name: str,
            extra_metadata: Optional[dict] = None) -> bytes:
        """The whole body of an object."""
        raise NotImplementedError

    def list(self, container: str, prefix: str) -> List[str]:
        """Names of every object in the container that start with prefix."""
        raise NotImplementedError

    def delete(self, container: str, name: str) -> None:
        """Delete an object; deleting one that does not exist succeeds."""
        raise NotImplementedError

    def put_stream(self, container: str, name: str, produce: Produce,
                   extra_metadata: Optional[dict] = None) -> None:
        """Store the chunks ``produce()`` yields, as one object.

        The object appears only once complete. ``produce`` may be called
        again for each attempt.
        """
        self.put(container, name, b''.join(produce()), extra_metadata)

    def get_stream(self, container: str, name: str,
                   extra_metadata: Optional[dict] = None,
                   chunk_size: int = DEFAULT_CHUNK_SIZE
                   ) -> Generator[bytes, None, None]:
        """The body of an object in chunks of at most about chunk_size.

        Lazy: nothing is requested before the first chunk is asked for,
        so a missing object is reported by iterating.
        """
        body = self.get(container, name, extra_metadata)
        if body:
            yield body

    @property
    def supports_ranges(self) -> bool:
        """Whether ``get_range`` and ``object_size`` are cheap here.

        False for a five-method store: its ranges are read through
        ``get_stream`` from the object's start.
        """
        return False

    def get_range(self, container: str, name: str, offset: int,
                  length: int, extra_metadata: Optional[dict] = None
                  ) -> bytes:
        """``length`` bytes of an object from ``offset``.

        Fewer at the object's end, b'' past it; a missing object raises
        StorageObjectNotFound as ``get`` does.
        """
        check_range(offset, length)
        return slice_stream(self.get_stream(container, name, extra_metadata),
                            offset, length)

    def object_size(self, container: str, name: str,
                    extra_metadata: Optional[dict] = None) -> int:
        """The size in bytes of an object's body."""
        return sum(len(chunk) for chunk in
                   self.get_stream(container, name, extra_metadata))

    def copy(self, container: str, name: str, dest_container: str,
             dest_name: str) -> None:
        """Copy an object to another name (and container), same bytes.

        Stores copy on the server (the driver's ``copy_object``); this
        default, for a store that cannot, streams the body through the
        client. The copy appears only once complete.
        """
        self.put_stream(dest_container, dest_name,
                        lambda: self.get_stream(container, name))


def check_range(offset: int, length: int) -> None:
    """A range a store can answer: no negative offset or length."""
    if offset < 0 or length < 0:
        raise ValueError('a range needs offset >= 0 and length >= 0, not '
                         '%d and %d' % (offset, length))


def slice_stream(chunks: Iterator[bytes], offset: int, length: int) -> bytes:
    """Bytes ``[offset, offset + length)`` of a stream, reading no further.
    """
    wanted: List[bytes] = []
    position = 0
    end = offset + length
    try:
        for chunk in chunks:
            if position >= end:
                break
            start = max(offset - position, 0)
            stop = min(end - position, len(chunk))
            if stop > start:
                wanted.append(bytes(chunk[start:stop]))
            position += len(chunk)
    finally:
        close = getattr(chunks, 'close', None)
        if close is not None:
            close()
    return b''.join(wanted)


class ForwardingStore(ObjectStore):
    """Passes every operation to ``inner``; wrappers override what they need.
    """

    def __init__(self, inner: ObjectStore):
        self.inner = inner

    def ensure_container(self, container: str) -> None:
        self.inner.ensure_container(container)

    def put(self, container: str, name: str, body: bytes,
            extra_metadata: Optional[dict] = None) -> None:
        self.inner.put(container, name, body, extra_metadata)

    def get(self, container: str, name: str,
            extra_metadata: Optional[dict] = None) -> bytes:
        return self.inner.get(container, name, extra_metadata)

    def list(self, container: str, prefix: str) -> List[str]:
        return self.inner.list(container, prefix)

    def delete(self, container: str, name: str) -> None:
        self.inner.delete(container, name)

    def put_stream(self, container: str, name: str, produce: Produce,
                   extra_metadata: Optional[dict] = None) -> None:
        self.inner.put_stream(container, name, produce, extra_metadata)

    def get_stream(self, container: str, name: str,
                   extra_metadata: Optional[dict] = None,
                   chunk_size: int = DEFAULT_CHUNK_SIZE
                   ) -> Generator[bytes, None, None]:
        return self.inner.get_stream(container, name, extra_metadata,
                                     chunk_size)

    @property
    def supports_ranges(self) -> bool:
        return self.inner.supports_ranges

    def get_range(self, container: str, name: str, offset: int,
                  length: int, extra_metadata: Optional[dict] = None
                  ) -> bytes:
        return self.inner.get_range(container, name, offset, length,
                                    extra_metadata)

    def object_size(self, container: str, name: str,
                    extra_metadata: Optional[dict] = None) -> int:
        return self.inner.object_size(container, name, extra_metadata)

    def copy(self, container: str, name: str, dest_container: str,
             dest_name: str) -> None:
        self.inner.copy(container, name, dest_container, dest_name)


def target_of(container: str, name: Optional[str] = None) -> str:
    """How errors and logs name a container or an object."""
    return container if name is None else '%s/%s' % (container, name)
