"""The ObjectStore interface and the forwarding base of every wrapper."""
from typing import Callable, Generator, Iterable, List, Optional

MiB = 2 ** 20
DEFAULT_CHUNK_SIZE = 8 * MiB

# ``produce()`` returns a fresh iterator of the body's chunks each time it
# is called, so a retry can send the body again.
Produce = Callable[[], Iterable[bytes]]


class ObjectStore:
    """Seven operations on named objects, the engine's only way to storage.

    Subclasses implement the first five; ``put_stream`` and ``get_stream``
    default to whole-body ``put`` and ``get`` so a five-method store
    still works (holding the body in memory).
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


def target_of(container: str, name: Optional[str] = None) -> str:
    """How errors and logs name a container or an object."""
    return container if name is None else '%s/%s' % (container, name)
