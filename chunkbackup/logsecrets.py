"""Keep secrets out of client libraries' debug logs.

At DEBUG botocore, swiftclient and keystoneauth log request headers and
parameters, where keys and passwords travel. A ``SecretFilter`` on those
libraries' own loggers (a filter sees only the records of its logger)
blanks the secrets a driver registers; it costs nothing unless they log.
"""
import logging
import threading
from typing import Iterable, Optional

MASK = '***'


class SecretFilter(logging.Filter):
    """Replaces every registered secret in a record's message."""

    def __init__(self):
        super().__init__()
        # A tuple, replaced whole: other threads may be logging through
        # the filter while a new driver adds its secrets.
        self.secrets = ()
        self._lock = threading.Lock()

    def add(self, secrets: Iterable[Optional[str]]) -> None:
        with self._lock:
            self.secrets = tuple(set(self.secrets) |
                                 {s for s in secrets if s})

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            cleaned = message
            for secret in self.secrets:
                cleaned = cleaned.replace(secret, MASK)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True


_FILTER = SecretFilter()


def hide_in_logs(library: str, loggers: Iterable[str],
                 *secrets: Optional[str]) -> None:
    """Blank ``secrets`` out of the logs of a client library.

    ``library`` is the library's top logger name (e.g. ``botocore``): the
    filter goes on it, on every child logger that exists already and on
    ``loggers``, the children that log requests (which may not exist yet).
    Unset secrets (None, '') are ignored.
    """
    _FILTER.add(secrets)
    known = [name for name in list(logging.root.manager.loggerDict)
             if name == library or name.startswith(library + '.')]
    for name in set(known) | set(loggers) | {library}:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
