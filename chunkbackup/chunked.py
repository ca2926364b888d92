"""ChunkedBackupDriver: the Cinder-facing class every driver subclasses.

A driver supplies Cinder's eight hooks (object naming and object I/O). This
class turns them into an ``ObjectStore`` (``chunkbackup.storage``, with
retries, limits, metrics at one root) and hands that store, the backup's
``Location`` and an ``EngineOptions`` to the engine, which works by phase:

- ``engine.sources``: what to read (holes, changed-block maps, NBD);
- ``engine.backup``: the backup writer (objects and block map);
- ``engine.blockmap``: block maps, streamed to and from ``_sha256file``;
- ``engine.plan``: the restore plan, from metadata alone;
- ``engine.restore``: the restore executor and its sinks.

The objects, ``_sha256file`` and ``_metadata`` it stores, and their
names, are Cinder's chunked-backup format, described in our own words in
doc/format.md. See ``chunkbackup.drivers.posix`` for the smallest driver.
"""
import abc
import dataclasses
import time
import types
from typing import (Any, Callable, ContextManager, Iterable, List, Optional,
                    Tuple)

from oslo_config import cfg
from oslo_log import log as logging

from chunkbackup import backupformat as fmt
from chunkbackup import checksums
from chunkbackup.crypto.envelope import ChainKeys
from chunkbackup.crypto import keys as crypto_keys
from chunkbackup import driver
from chunkbackup.engine import backup as backup_writer
from chunkbackup.engine import blockmap
from chunkbackup.engine import documents
from chunkbackup.engine import encryption
from chunkbackup.engine import fold
from chunkbackup.engine.options import EngineOptions
from chunkbackup.engine import plan as restore_plan
from chunkbackup.engine import readplan
from chunkbackup.engine import restore as restore_executor
from chunkbackup.engine import sources
from chunkbackup import exception
from chunkbackup import names
from chunkbackup import objectlock
from chunkbackup import opts  # noqa: F401  (registers [chunkbackup])
from chunkbackup import progress
from chunkbackup.records import BackupLike
from chunkbackup import storage

check_safe_id = names.check_safe_id
volume_size_of = sources.volume_size_of
BackupStats = backup_writer.BackupStats
RestorePlan = restore_plan.RestorePlan

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

GiB = 2 ** 30
CANCEL_BACKUP_STATUSES = frozenset(('deleting', 'deleted'))
Range = Tuple[int, int]


@dataclasses.dataclass
class Run:
    """What one operation reports to and asks: progress and cancellation."""

    progress: progress.Progress
    # check_cancel(force=False): force skips cancel_check_interval.
    check_cancel: Callable[..., None]

    def advance(self, nbytes: int) -> None:
        self.progress.advance(nbytes)


class ChunkedBackupDriver(driver.BackupDriver, metaclass=abc.ABCMeta):
    """Chunking, block maps, compression, incrementals, restore, verify.

    Subclasses implement the eight hooks below; the engine does the rest.
    """

    DRIVER_VERSION = fmt.VERSION
    # A backup whose status turns to deleting stops and removes its objects.
    support_force_delete = True

    def __init__(self, context: Any, object_size: int,
                 object_size_option: str, db: Any = None):
        super().__init__(context, db)
        self.engine_options = EngineOptions.from_conf(
            CONF.chunkbackup, object_size, object_size_option)
        self.compressor = self.engine_options.compressor()
        self.progress_listeners: List[progress.ProgressListener] = \
            self.default_progress_listeners()
        self._store: Optional[storage.ObjectStore] = None
        # Added by storage.add_wrapper (tests' fault injection).
        self.extra_store_wrappers: List[storage.Wrapper] = []
        self._zeros = backup_writer.Zeros(
            self.engine_options.sha_block_size,
            max(self.engine_options.sha_block_size,
                min(object_size, backup_writer.PIECE_SIZE)),
            self.compressor)
        self._key_source: Optional[crypto_keys.KeySource] = None

    @property
    def sha_block_size(self) -> int:
        return self.engine_options.sha_block_size

    @property
    def object_size(self) -> int:
        return self.engine_options.object_size

    # ------------------------------------------------------------------
    # The hooks a driver supplies (Cinder's names and meanings).

    @abc.abstractmethod
    def put_container(self, container: str) -> None:
        """Create the container if it does not exist."""

    @abc.abstractmethod
    def get_container_entries(self, container: str,
                              prefix: str) -> List[str]:
        """Names of all objects in the container that start with prefix."""

    @abc.abstractmethod
    def get_object_writer(self, container: str, object_name: str,
                          extra_metadata: Optional[dict] = None
                          ) -> ContextManager[Any]:
        """A context manager with ``write(bytes)``.

        The object exists under its name, complete, once the context exits
        without an error, and does not exist (not even partly) if it exits
        with one.
        """

    @abc.abstractmethod
    def get_object_reader(self, container: str, object_name: str,
                          extra_metadata: Optional[dict] = None
                          ) -> ContextManager[Any]:
        """A context manager with ``read()`` returning the whole body.

        ``read(size)``, if the reader takes it, returns at most ``size``
        bytes and b'' at the end: the store then streams big objects.
        """

    @abc.abstractmethod
    def delete_object(self, container: str, object_name: str) -> None:
        """Delete an object; may raise StorageObjectNotFound."""

    @abc.abstractmethod
    def _generate_object_name_prefix(self, backup: BackupLike) -> str:
        """The object name prefix of a new backup."""

    @abc.abstractmethod
    def update_container_name(self, backup: BackupLike,
                              container: Optional[str]) -> Optional[str]:
        """The container to use, given the one the backup asked for.

        None keeps the backup's container, or ``default_container`` when
        it names none (Cinder's contract, so Cinder-style subclasses work).
        """

    @abc.abstractmethod
    def get_extra_metadata(self, backup: BackupLike,
                           volume: Any) -> Optional[dict]:
        """Driver data stored in ``_metadata`` and given back to readers."""

    # Optional hooks.

    def default_container(self, backup: BackupLike) -> Optional[str]:
        """The container of a backup that names none, when
        ``update_container_name`` returns None (Cinder's
        ``backup_default_container``).
        """
        return None

    def classify_error(self, exc: BaseException
                       ) -> Tuple[str, Optional[str]]:
        """(kind, reason) of a failure of the driver's client.

        See chunkbackup.storage.errors for the kinds.
        """
        return storage.classify_default(exc)

    def flush_container(self, container: str) -> None:
        """Make the objects written so far durable (before _metadata)."""

    def copy_object(self, container: str, object_name: str,
                    dest_container: str, dest_name: str) -> bool:
        """Copy an object inside the store, on the server (optional hook).

        The copy must appear only once complete, with the same body (and
        encryption) as the original. Return False when this store cannot
        copy: the engine then copies through the client.
        """
        return False

    @property
    def store_label(self) -> str:
        """The driver's short name for messages: posix, swift, s3, ..."""
        return type(self).__module__.rsplit('.', 1)[-1]

    # Object lock (chunkbackup.objectlock): the store's mechanism that
    # refuses deletes before a date ('S3 object lock'), or None when this
    # driver's store has none.
    object_lock_mechanism: Optional[str] = None

    def object_lock_hint(self) -> Optional[str]:
        """Why new backups would not be locked (None: they are)."""
        if not self.object_lock_mechanism:
            return objectlock.cannot_lock(self.store_label)
        return 'object lock is not set up for this driver'

    def object_lock_of(self, backup: BackupLike
                       ) -> Optional[objectlock.ObjectLock]:
        """The lock the store holds on a backup's objects, or None."""
        return None

    def wrap_store(self, store: storage.ObjectStore) -> storage.ObjectStore:
        """Wrap the driver's store, inside metrics, limits and retries."""
        return store

    # ------------------------------------------------------------------

    def key_source(self) -> crypto_keys.KeySource:
        """Where the master keys of encrypted backups come from, once."""
        if self._key_source is None:
            self._key_source = crypto_keys.configured_source(
                self.engine_options.key_file,
                context=getattr(self, 'context', None))
        return self._key_source

    def _new_chain_keys(self, backup, parent) -> Optional[ChainKeys]:
        """The keys of a new backup: its parent's, or a new chain's."""
        if parent is not None:
            return parent.keys
        if not self.engine_options.encrypts:
            return None
        return ChainKeys.create(self.key_source().current(), backup.id)

    @property
    def store(self) -> storage.ObjectStore:
        """The driver's object I/O, with every cross-cutting wrapper."""
        if self._store is None:
            self._store = storage.build_store(self)
        return self._store

    def _run(self, backup: BackupLike, operation: str, total: int) -> Run:
        return Run(progress.Progress(self.progress_listeners, operation,
                                     backup, total),
                   self._cancel_checker(backup, operation))

    def _cancel_checker(self, backup, operation) -> Callable[..., None]:
        """A callable that raises when the backup record says cancel.

        Checks at most every cancel_check_interval seconds, except the
        first time and when called with force=True (before the first
        object and before _metadata, where Cinder checks too).
        """
        start_status = getattr(backup, 'status', None)
        last = [float('-inf')]
        interval = self.engine_options.cancel_check_interval

        def check(force: bool = False):
            now = time.monotonic()
            if not force and now - last[0] < interval:
                return
            last[0] = now
            self.refresh_backup(backup)
            status = getattr(backup, 'status', None)
            if operation == 'backup':
                if status in CANCEL_BACKUP_STATUSES:
                    raise exception.BackupOperationCancelled(
                        operation='backup', backup_id=backup.id)
            elif status != start_status:
                raise exception.BackupRestoreCancel(
                    backup_id=backup.id,
                    volume_id=getattr(backup, 'volume_id', None))
        return check

    def _read_block_map(self, backup: BackupLike,
                        location: documents.Location,
                        keys: Optional[ChainKeys] = None
                        ) -> blockmap.BlockMap:
        block_map = documents.read_block_map(
            self.store, backup, location, self.engine_options.block_map_memory,
            self.engine_options.temp_dir,
            digests=keys.digests if keys else checksums.PLAIN)
        assert block_map is not None  # without missing_ok a missing one raises
        return block_map

    # ------------------------------------------------------------------
    # Backup.

    def backup(self, backup: BackupLike, volume_file: Any,
               backup_metadata: bool = True, *,
               changed_extents: Optional[Iterable[Range]] = None,
               stats: Optional[BackupStats] = None) -> dict:
        """Back up ``volume_file`` (a file object, or a VolumeSource).

        ``changed_extents`` are the byte ranges that changed since the
        parent (a changed-block map); checked by sampling before use.
        ``stats``, when given, is filled in with what the backup did.
        """
        check_safe_id('backup id', backup.id)
        check_safe_id('volume id', backup.volume_id)
        self.check_lock_required()
        source = sources.open_source(volume_file,
                                     self.engine_options.skip_holes)
        stats = stats if stats is not None else BackupStats()
        stats.volume_size = source.size
        parent = None
        if backup.parent_id:
            parent = self._parent(backup, source.size)
        elif changed_extents is not None:
            raise exception.InvalidBackup(
                reason='a changed-block map needs a parent: make the backup '
                       'incremental, or drop the map for a full backup')
        try:
            return self._backup(backup, source, parent, changed_extents,
                                backup_metadata, stats)
        finally:
            if parent is not None:
                parent.block_map.close()

    def _backup(self, backup, source, parent, changed_extents,
                backup_metadata, stats):
        location = documents.Location(
            self._container_of(backup),
            self._generate_object_name_prefix(backup))
        backup.container = location.container
        backup.service_metadata = location.prefix
        backup.size = max(1, -(-source.size // GiB))
        backup.save()
        LOG.debug('Backup %(id)s of %(what)s %(vol)s (%(size)d bytes): '
                  'container %(c)s, prefix %(p)s, parent %(parent)s.',
                  {'id': backup.id, 'what': source.description,
                   'vol': backup.volume_id, 'size': source.size,
                   'c': location.container, 'p': location.prefix,
                   'parent': backup.parent_id})
        self.store.ensure_container(location.container)
        extra_metadata = self.get_extra_metadata(
            backup, {'id': backup.volume_id, 'size': backup.size})
        keys = self._new_chain_keys(backup, parent)
        stats.encryption = ChainKeys.cipher if keys is not None else None
        try:
            segments = self._segments(source, parent, changed_extents, stats)
            writer = backup_writer.BackupWriter(
                self.store, self.engine_options, self.compressor, self._zeros,
                keys, backup.id)
            run = self._run(backup, 'backup', source.size)
            run.progress.details.update(prefix=location.prefix,
                                        objects=writer.entries,
                                        extra_metadata=extra_metadata)
            run.check_cancel(force=True)
            with run.progress:
                entries, block_map = writer.write(
                    location, source, segments, parent, extra_metadata, run,
                    stats)
            with block_map:
                run.check_cancel(force=True)
                volume_meta = (self.get_metadata(backup.volume_id)
                               if backup_metadata else None)
                self.flush_container(location.container)
                documents.write_documents(
                    self.store, backup, location, entries, block_map,
                    volume_meta, extra_metadata,
                    lambda: self.flush_container(location.container),
                    lambda: run.check_cancel(force=True), keys)
        except exception.BackupOperationCancelled as e:
            LOG.warning('Backup %(id)s was cancelled; removing the objects '
                        'it wrote.', {'id': backup.id})
            self._delete_objects_quietly(location.container, location.prefix)
            return self.backup_cancelled(backup, e)
        except BaseException as e:
            # The caller reports the failure (the CLI in one line, the
            # service in its log): here only what is done about it.
            LOG.info('Backup %(id)s failed (%(err)s); removing the objects '
                     'it wrote.', {'id': backup.id, 'err': e})
            self._delete_objects_quietly(location.container, location.prefix)
            raise
        # Data objects only, as Cinder counts them.
        backup.object_count = len(entries)
        backup.save()
        return {'parent_id': backup.parent_id}

    def _container_of(self, backup) -> str:
        """Cinder's rule: the hook's answer, else the backup's, else the
        default.
        """
        current = getattr(backup, 'container', None)
        container = (self.update_container_name(backup, current) or current
                     or self.default_container(backup))
        if not container:
            raise exception.InvalidConfiguration(
                reason='%s.update_container_name returned no container for '
                       'backup %s and the driver has no default_container; '
                       'return a container name' % (type(self).__name__,
                                                    backup.id))
        return container

    def _parent(self, backup, volume_size) -> backup_writer.Parent:
        return readplan.load_parent(self.store, backup, volume_size,
                                    self.engine_options, self.key_source)

    def _segments(self, source, parent, changed_extents, stats
                  ) -> List[sources.Segment]:
        return readplan.plan_reads(source, parent, changed_extents,
                                   self.engine_options, stats)

    # ------------------------------------------------------------------
    # Restore and verify.

    def plan_restore(self, backup: BackupLike,
                     check_listing: bool = True) -> RestorePlan:
        """Work out, from metadata alone, what a restore fetches and writes.

        The plan holds the target's block map: close it with
        ``plan.close()`` (restore and verify do). A backup whose
        ``_sha256file`` is lost is planned from its objects alone (see
        ``engine.plan``), with a warning.
        """
        chain = documents.load_chain(self.store, backup, check_listing)
        target = chain[-1]
        keys = encryption.chain_keys(chain, self.key_source)
        block_map = documents.read_block_map(
            self.store, backup, target.location,
            self.engine_options.block_map_memory,
            self.engine_options.temp_dir, missing_ok=True,
            digests=keys.digests if keys else checksums.PLAIN)
        if block_map is None:
            LOG.warning('Backup %(id)s has no _sha256file (%(name)s is '
                        'lost): restoring it from its objects with each '
                        'object\'s MD5 checked; block checks are '
                        'impossible, and it cannot be the parent of an '
                        'incremental.',
                        {'id': backup.id, 'name': target.location.sha256file})
            size = restore_plan.check_chain(chain, 1)
            plan = restore_plan.plan(chain, None, size, self.sha_block_size)
            plan.keys = keys
            return plan
        try:
            size = restore_plan.check_chain(chain, block_map.block_size)
            plan = restore_plan.plan(chain, block_map, size)
        except BaseException:
            block_map.close()
            raise
        plan.keys = keys
        LOG.debug('Restore plan of backup %(id)s: %(size)d bytes from a '
                  'chain of %(n)d, %(f)d objects to fetch, %(z)d zero bytes.',
                  {'id': backup.id, 'size': size, 'n': len(chain),
                   'f': len(plan.fetches), 'z': plan.zero_bytes})
        return plan

    def restore(self, backup: BackupLike, volume_id: str, volume_file: Any,
                volume_is_new: bool = False,
                byte_range: Optional[Range] = None) -> None:
        """Restore the backup's image, or with ``byte_range`` (offset,
        length) only those bytes, written from the start of the target.
        """
        plan = self.plan_restore(backup)
        sink = (volume_file if isinstance(volume_file,
                                          restore_executor.Sink)
                else restore_executor.FileSink(volume_file, volume_is_new,
                                               self._zeros.piece))
        total = plan.size
        if byte_range is not None:
            try:
                plan = restore_plan.restrict(plan, *byte_range)
            except BaseException:
                plan.close()
                raise
            sink = restore_executor.RangeSink(sink, *byte_range)
            total = byte_range[1]
        try:
            self._execute(backup, plan, sink, 'restore',
                          self.engine_options.restore_check_md5, total=total)
        except exception.BackupRestoreCancel as e:
            error = self.restore_cancelled(backup, volume_id, e)
            if error is e:
                raise
            raise error from e
        # Every layer's, base first, as Cinder applies them: older keys
        # survive, newer ones win.
        for layer in plan.chain:
            volume_meta = layer.metadata.volume_meta
            if volume_meta and plan.keys is not None:
                volume_meta = plan.keys.open_text(volume_meta,
                                                  layer.backup.id,
                                                  'volume_meta')
            if volume_meta:
                self.put_metadata(volume_id, volume_meta)

    def verify(self, backup: BackupLike) -> RestorePlan:
        """Check a backup as a restore would, writing nothing.

        Every object that holds a block of the image is fetched, its MD5
        and the SHA-256 of every block checked. Bad objects do not stop
        it: BackupVerifyFailed at the end lists every one.
        """
        # Missing objects are found by listing, after the others are
        # checked, so that every bad object is reported.
        plan = self.plan_restore(backup, check_listing=False)
        problems: List[restore_executor.Problem] = []  # every bad object
        self._execute(backup, plan, restore_executor.NullSink(), 'verify',
                      check_md5=True, problems=problems)
        reported = {problem[1] for problem in problems}
        for layer in plan.chain:
            for entry in documents.missing_objects(self.store, layer):
                if entry.name not in reported:
                    problems.append((entry.offset, entry.name,
                                     'object %s of backup %s does not exist'
                                     % (entry.name, layer.backup.id), True))
        problems.sort()
        if problems and all(missing for *_, missing in problems):
            raise exception.BackupIncomplete(
                backup_id=backup.id, container=plan.chain[-1].container,
                reason='%d object(s) named in _metadata are missing: %s'
                       % (len(problems), ', '.join(p[1] for p in problems)))
        if problems:
            # As any BackupCorrupted, it names an object and an offset:
            # the first bad one in volume order.
            offset, name = problems[0][:2]
            raise exception.BackupVerifyFailed(
                backup_id=backup.id, object=name, offset=offset,
                count=len(problems),
                problems='; '.join(p[2] for p in problems))
        return plan

    def _execute(self, backup, plan, sink, operation, check_md5,
                 problems=None, total=None):
        executor = restore_executor.RestoreExecutor(self.store,
                                                    self.engine_options)
        run = self._run(backup, operation,
                        plan.size if total is None else total)
        try:
            with run.progress:
                executor.execute(plan, sink, check_md5, run, problems)
        finally:
            plan.close()

    # ------------------------------------------------------------------
    # Discovery, for rebuilding a catalog from the store.

    def find_metadata_objects(self, container: Optional[str] = None
                              ) -> Iterable[Tuple[str, str]]:
        """Yield (container, name) of every ``_metadata`` object.

        Object stores list their (default) container; drivers whose
        backups live in many containers (posix) override this.
        """
        if container is None:
            anonymous = types.SimpleNamespace(id='0' * 36, volume_id='0',
                                              container=None)
            container = self._container_of(anonymous)
        for name in self.store.list(container, ''):
            if name.endswith('_metadata'):
                yield container, name

    # ------------------------------------------------------------------
    # Re-homing: folds and synthetic fulls (engine.fold).

    def fold_into_child(self, parent: BackupLike,
                        child: BackupLike) -> 'fold.Rehoming':
        """Fold ``parent`` into ``child`` in the store (not the records).

        The objects of the parent that own bytes of the child's image are
        copied under the child's prefix, then the child's ``_metadata``
        is replaced (naming the parent's parent). The parent's objects are
        left for the caller to delete once its records agree.
        """
        chain = documents.load_chain(self.store, child, check_listing=True)
        keys = encryption.chain_keys(chain, self.key_source)
        if len(chain) < 2 or chain[-2].backup.id != parent.id:
            raise exception.InvalidBackup(
                reason='backup %s is not the parent of backup %s in the '
                       'store' % (parent.id, child.id))
        rehoming = fold.plan_fold(chain[-2], chain[-1])
        before = max(layer.end for layer in chain)
        if not rehoming.metadata.parent_id:
            # The child becomes a full backup: see fold.make_base_safe.
            with self._read_block_map(child, chain[-1].location,
                                      keys) as bm:
                fold.make_base_safe(rehoming, bm, before)
        after_chain = chain[:-2] + [documents.Layer(
            child, chain[-1].location, rehoming.metadata)]
        restore_plan.check_chain(after_chain, self.sha_block_size)
        if max(layer.end for layer in after_chain) != before:
            raise exception.InvalidBackup(
                reason='folding backup %s into %s would change the size of '
                       'its image (a bug): nothing was changed'
                       % (parent.id, child.id))
        LOG.info('Folding backup %(p)s into %(c)s: %(n)d object(s) copied '
                 'under %(prefix)s, %(d)d that own nothing dropped.',
                 {'p': parent.id, 'c': child.id, 'n': len(rehoming.copies),
                  'prefix': chain[-1].prefix, 'd': len(rehoming.dropped)})
        fold.rewrite(self.store, rehoming, self.compressor, keys, child.id)
        fold.copy_objects(self.store, rehoming, self.engine_options)
        self.flush_container(chain[-1].container)
        fold.write_metadata(self.store, chain[-1].location,
                            rehoming.metadata, keys)
        self.flush_container(chain[-1].container)
        return rehoming

    def fold_state(self, parent: BackupLike, child: BackupLike) -> str:
        """Where an interrupted fold stands in the store.

        'done': the child's ``_metadata`` names the parent's parent (the
        parent's objects may go); 'undone': it still names the parent, and
        the copies the fold made (objects with the child's prefix that its
        ``_metadata`` does not name) are removed here.
        """
        location = documents.Location.of(child)
        metadata = documents.read_metadata(self.store, child, location)
        if (metadata.parent_id or None) != parent.id:
            return 'done'
        layer = documents.Layer(child, location, metadata)
        stray = fold.stray_copies(self.store, layer)
        for name in stray:
            self.store.delete(location.container, name)
        if stray:
            LOG.warning('Removed %(n)d copy(ies) an interrupted fold of '
                        'backup %(p)s had made under %(c)s.',
                        {'n': len(stray), 'p': parent.id, 'c': child.id})
        return 'undone'

    def synthetic_full(self, backup: BackupLike,
                       newest: BackupLike) -> 'fold.Rehoming':
        """Make ``backup`` a full backup of ``newest``'s image, from the
        store alone (no volume read): see ``engine.fold``.
        """
        self.check_lock_required()
        chain = documents.load_chain(self.store, newest, check_listing=True)
        keys = encryption.chain_keys(chain, self.key_source)
        location = documents.Location(
            self._container_of(backup),
            self._generate_object_name_prefix(backup))
        backup.container = location.container
        backup.service_metadata = location.prefix
        backup.size = max(1, -(-max(layer.end for layer in chain) // GiB))
        backup.save()
        self.store.ensure_container(location.container)
        common = documents.common_fields(backup)
        rehoming = fold.plan_synthetic(chain, location, common)
        if keys is not None and rehoming.metadata.volume_meta:
            # Sealed for the newest backup: sealed anew for this one.
            rehoming.metadata.volume_meta = keys.seal_text(
                keys.open_text(rehoming.metadata.volume_meta, newest.id,
                               'volume_meta'), backup.id, 'volume_meta')
        try:
            block_map = self._read_block_map(newest, chain[-1].location,
                                             keys)
            with block_map:
                fold.make_base_safe(rehoming, block_map,
                                    max(layer.end for layer in chain))
                fold.rewrite(self.store, rehoming, self.compressor, keys,
                             backup.id)
                fold.copy_objects(self.store, rehoming, self.engine_options)
                extra = rehoming.metadata.extra_metadata
                self.store.put_stream(
                    location.container, location.sha256file,
                    blockmap.sha256file_chunks(block_map, common),
                    extra if isinstance(extra, dict) else None)
            self.flush_container(location.container)
            fold.write_metadata(self.store, location, rehoming.metadata,
                                keys)
            self.flush_container(location.container)
        except BaseException as e:
            LOG.info('Synthetic full %(id)s failed (%(err)s); removing the '
                     'objects it copied.', {'id': backup.id, 'err': e})
            self._delete_objects_quietly(location.container, location.prefix)
            raise
        backup.object_count = len(rehoming.metadata.objects)
        backup.save()
        return rehoming

    # ------------------------------------------------------------------
    # Key rotation.

    def rewrap_backup(self, backup: BackupLike,
                      master: crypto_keys.MasterKey) -> str:
        """Wrap an encrypted backup's data key under ``master``.

        Only ``_metadata`` is rewritten (signed anew): data objects stay
        as they are. Returns 'rewrapped', 'current' (already under that
        key) or 'plain' (not encrypted).
        """
        location = documents.Location.of(backup)
        metadata = documents.read_metadata(self.store, backup, location)
        if metadata.encryption is None:
            return 'plain'
        old_id = metadata.encryption['key_id']
        layer = documents.Layer(backup, location, metadata)
        keys = encryption.open_layer(layer, self.key_source)
        if old_id == master.key_id:
            return 'current'
        rewrapped = keys.rewrapped(master, self.key_source().get(old_id))
        document = dict(metadata.raw or {})
        rewrapped.sign(document)
        extra = metadata.extra_metadata
        self.store.put(location.container, location.metadata,
                       fmt.dumps(document),
                       extra if isinstance(extra, dict) else None)
        self.flush_container(location.container)
        return 'rewrapped'

    # ------------------------------------------------------------------
    # Delete.

    def check_lock_required(self) -> None:
        """``[chunkbackup] require_object_lock``: refuse a backup that
        would not be locked, before anything is written.
        """
        objectlock.check_required(self, self.store_label,
                                  CONF.chunkbackup.require_object_lock)

    def delete_backup(self, backup: BackupLike) -> None:
        # Before anything is removed: the store would refuse the deletes
        # one by one, after the _metadata of a governance-locked backup
        # on a store that allowed it.
        objectlock.refuse_if_locked(backup, self)
        dependents = getattr(backup, 'num_dependent_backups', 0) or 0
        if getattr(backup, 'has_dependent_backups', False) or dependents:
            raise exception.BackupInUse(
                backup_id=backup.id,
                children=getattr(backup, 'dependent_backup_ids', None) or
                '%d incremental backup(s)' % max(dependents, 1))
        container = getattr(backup, 'container', None)
        prefix = getattr(backup, 'service_metadata', None)
        if not container or not prefix:
            LOG.info('Backup %s never wrote objects; nothing to delete.',
                     backup.id)
            return
        self.delete_objects(container, prefix)

    def delete_objects(self, container: str, prefix: str) -> int:
        """Delete every object with the prefix, ``_metadata`` first.

        Then the driver may remove the container if nothing is left in it
        (``remove_empty_container``).
        """
        count = documents.delete_objects(self.store, container, prefix,
                                         self.engine_options)
        self.remove_empty_container(container)
        return count

    def remove_empty_container(self, container: str) -> None:
        """Remove a container that holds nothing any more (optional hook).

        Called after a delete and after a failed backup's clean-up.
        """

    def _delete_objects_quietly(self, container, prefix):
        try:
            self.delete_objects(container, prefix)
        except Exception as e:
            LOG.error('Could not remove the objects with prefix %(p)s from '
                      '%(c)s (%(err)s); remove them by hand or run the '
                      'cleanup.', {'p': prefix, 'c': container, 'err': e})
