"""Name checks every driver needs: nothing may escape its root or prefix.

Applied at the storage seam to every container and object name, so a
driver cannot forget them; drivers with a filesystem add their own check
that the resolved path stays below the root (symlinks).
"""
import re

from chunkbackup import exception

MAX_NAME_LENGTH = 1024
# fullmatch: '$' alone would let a trailing newline through.
_SAFE_ID_RE = re.compile(r'[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}')
# C0 and C1 control characters and DEL: they end lines, move terminals'
# cursors and mean nothing in a name.
_CONTROL_RE = re.compile('[\x00-\x1f\x7f-\x9f]')


def check_safe_id(kind: str, value: object) -> str:
    """Refuse ids (backup, volume) that could escape a prefix or a path."""
    if not isinstance(value, str) or not _SAFE_ID_RE.fullmatch(value) or (
            '..' in value):
        raise exception.InvalidName(
            kind=kind, name=value,
            reason='ids are 1-128 letters, digits, "_", "-", ".", ":"')
    return value


def check_relative(kind: str, name: object) -> str:
    """Refuse empty, absolute, '..'-bearing, control-char or huge names."""
    if not isinstance(name, str) or not name:
        raise exception.InvalidName(kind=kind, name=name,
                                    reason='it is empty or not text')
    control = _CONTROL_RE.search(name)
    if control:
        raise exception.InvalidName(
            kind=kind, name=name,
            reason='it contains the control character %r'
                   % control.group())
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
