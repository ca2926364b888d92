"""Name checks every driver needs: nothing may escape its root or prefix.

Applied at the storage seam to every container and object name, so a
driver cannot forget them; drivers with a filesystem add their own check
that the resolved path stays below the root (symlinks).
"""
import re

from chunkbackup import exception

MAX_NAME_LENGTH = 1024
_SAFE_ID_RE = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$')


def check_safe_id(kind: str, value) -> str:
    """Refuse ids (backup, volume) that could escape a prefix or a path."""
    if not isinstance(value, str) or not _SAFE_ID_RE.match(value) or (
            '..' in value):
        raise exception.InvalidName(
            kind=kind, name=value,
            reason='ids are 1-128 letters, digits, "_", "-", ".", ":"')
    return value


def check_relative(kind: str, name) -> str:
    """Refuse empty, absolute, '..'-bearing, NUL/newline or huge names."""
    if not isinstance(name, str) or not name:
        raise exception.InvalidName(kind=kind, name=name,
                                    reason='it is empty or not text')
    if '\0' in name or '\n' in name or '\r' in name:
        raise exception.InvalidName(kind=kind, name=name,
                                    reason='it contains NUL or a newline')
    if name.startswith(('/', '\\')):
        raise exception.InvalidName(kind=kind, name=name,
                                    reason='it is an absolute path')
    if '..' in name.replace('\\', '/').split('/'):
        raise exception.InvalidName(kind=kind, name=name,
                                    reason="it has a '..' component")
    if len(name.encode('utf-8', 'surrogatepass')) > MAX_NAME_LENGTH:
        raise exception.InvalidName(
            kind=kind, name=name[:64] + '...',
            reason='it is longer than %d bytes' % MAX_NAME_LENGTH)
    return name
