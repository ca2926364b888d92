"""Naming backups as people do: ids, id prefixes, names, ``latest``.

Every command that takes a backup takes a *reference*, resolved here and
only here (:func:`resolve`, through :func:`chunkbackup.catalog.api.
get_backup`):

- a whole id;
- a unique prefix of an id, git-style, of at least :data:`MIN_PREFIX`
  characters;
- a backup's name (``--name``);
- ``latest``: the newest available backup, and ``latest:VOLUME``: the
  newest available backup of a volume, given by its path (resolved to its
  id as ``backup-create`` derives it), NBD URL or volume id.

A reference that matches several backups is refused with one line that
lists them; nothing is guessed.
"""
import os
from typing import Dict, List, Optional, Sequence

import sqlalchemy as sa
from sqlalchemy import orm

from chunkbackup.catalog import models
from chunkbackup import exception

MIN_PREFIX = 4
LATEST = 'latest'
# Shown at most in an ambiguity message.
MAX_CANDIDATES = 5
# Statuses that ``latest`` picks from: complete backups (one being
# restored is complete and unchanged by the restore).
COMPLETE = ('available', 'restoring')


class NotFound(exception.ChunkBackupError):
    msg_fmt = ("No backup %(ref)s in the catalog%(hint)s; 'chunkbackup "
               "backup-list' shows the backups it knows.")


class NoLatest(NotFound):
    msg_fmt = ("No available backup%(what)s in the catalog; 'chunkbackup "
               "backup-list' shows the backups it knows.")


class Ambiguous(exception.ChunkBackupError):
    msg_fmt = ("%(ref)s matches %(count)d backups: %(candidates)s; name "
               "one by its id (or a longer prefix of it)")


def describe(record: models.Backup) -> str:
    """A candidate in an ambiguity message: id, name, volume, time."""
    extra = [record.status]
    if record.display_name:
        extra.insert(0, 'name %s' % record.display_name)
    if record.created_at is not None:
        extra.append(record.created_at.strftime('%Y-%m-%d %H:%M:%S UTC'))
    return '%s (%s)' % (record.id, ', '.join(extra))


def ambiguous(ref: str, matches: Sequence[models.Backup]) -> Ambiguous:
    shown = [describe(m) for m in matches[:MAX_CANDIDATES]]
    if len(matches) > MAX_CANDIDATES:
        shown.append('and %d more' % (len(matches) - MAX_CANDIDATES))
    return Ambiguous(ref=repr(ref), count=len(matches),
                     candidates='; '.join(shown))


def choose(ref: str, by_prefix: Sequence[models.Backup],
           by_name: Sequence[models.Backup]) -> models.Backup:
    """The one backup that the id prefix or name ``ref`` names.

    Raises Ambiguous when several do (an id prefix of one backup that is
    also the name of another is ambiguous too) and NotFound when none.
    """
    seen: Dict[str, models.Backup] = {}
    for record in list(by_prefix) + list(by_name):
        seen.setdefault(record.id, record)
    matches = sorted(seen.values(), key=lambda r: (r.created_at is None,
                                                   r.created_at, r.id))
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ambiguous(ref, matches)
    hint = ''
    if len(ref) < MIN_PREFIX:
        hint = (' (an id prefix needs at least %d characters)'
                % MIN_PREFIX)
    raise NotFound(ref=ref, hint=hint)


def volume_filter(volume: str) -> sa.sql.expression.ColumnElement:
    """A WHERE clause for the backups of VOLUME: a path, NBD URL or id.

    A path matches the backups recorded with that path and those with the
    id ``backup-create`` derives from it (the default ``--volume-id``).
    """
    from chunkbackup import operations
    name = operations.volume_name(volume)
    ids = {volume, operations.volume_id_of(name)}
    clauses = [models.Backup.volume_id.in_(sorted(ids)),
               models.Backup.volume_path == name]
    if name != volume and not os.path.isabs(volume):
        clauses.append(models.Backup.volume_path == volume)
    return sa.or_(*clauses)


def latest(session: orm.Session, volume: Optional[str] = None
           ) -> models.Backup:
    """The newest complete backup, of VOLUME if given."""
    query = sa.select(models.Backup).where(
        models.Backup.status.in_(COMPLETE))
    if volume:
        query = query.where(volume_filter(volume))
    record = session.scalars(
        query.order_by(models.Backup.created_at.desc(),
                       models.Backup.id.desc()).limit(1)).first()
    if record is None:
        raise NoLatest(what=' of volume %s' % volume if volume else '')
    return record


def resolve(session: orm.Session, ref: str) -> models.Backup:
    """The backup that a reference names; see the module docstring."""
    ref = (ref or '').strip()
    if not ref:
        raise NotFound(ref="''", hint=' (give an id, a name or latest)')
    record = session.get(models.Backup, ref)
    if record is not None:
        return record
    if ref == LATEST:
        return latest(session)
    if ref.startswith(LATEST + ':') and len(ref) > len(LATEST) + 1:
        return latest(session, ref[len(LATEST) + 1:])
    by_prefix: List[models.Backup] = []
    if len(ref) >= MIN_PREFIX:
        escaped = (ref.replace('\\', '\\\\').replace('%', '\\%')
                   .replace('_', '\\_'))
        by_prefix = list(session.scalars(
            sa.select(models.Backup)
            .where(models.Backup.id.like(escaped.lower() + '%',
                                         escape='\\'))
            .limit(MAX_CANDIDATES + 50)))
    by_name = list(session.scalars(
        sa.select(models.Backup)
        .where(models.Backup.display_name == ref,
               models.Backup.status != 'deleted')
        .limit(MAX_CANDIDATES + 50)))
    return choose(ref, by_prefix, by_name)
