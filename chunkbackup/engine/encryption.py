"""Which chains are encrypted, and their keys, for the engine.

A chain is encrypted when its full backup was (``[chunkbackup]
encryption``); every incremental follows it. The keys of a chain come
from the ``encryption`` section of each ``_metadata`` (the data key,
wrapped by a master key of the configured key source), and every
``_metadata`` is checked against its HMAC before anything trusts it.
"""
from typing import Callable, List, Optional

from chunkbackup.crypto import envelope
from chunkbackup.crypto import keys as crypto_keys
from chunkbackup.engine import documents
from chunkbackup import exception

KeySourceFactory = Callable[[], crypto_keys.KeySource]


def open_layer(layer: documents.Layer,
               source: KeySourceFactory) -> envelope.ChainKeys:
    """The keys of an encrypted layer, its ``_metadata`` authenticated."""
    backup_id = layer.backup.id
    section = layer.metadata.encryption
    assert section is not None
    try:
        keys = envelope.ChainKeys.open_section(section, source(), backup_id)
    except crypto_keys.KeyUnavailable as e:
        advice = e.kwargs.get('reason', e.msg)
        raise crypto_keys.KeyUnavailable(
            reason='backup %s is encrypted with key %s; %s'
                   % (backup_id, section['key_id'], advice))
    except crypto_keys.WrongKey:
        raise exception.InvalidBackupMetadata(
            backup_id=backup_id, object=layer.location.metadata,
            reason='its data key does not unwrap with master key %s: the '
                   'wrapped key was altered, or that key is not the one '
                   'it was made with' % section['key_id'])
    keys.check(layer.metadata.raw or {}, backup_id, layer.location.metadata)
    return keys


def chain_keys(chain: List[documents.Layer],
               source: KeySourceFactory) -> Optional[envelope.ChainKeys]:
    """The keys of a chain (None: it is not encrypted), every layer checked.

    Raises when some layers are encrypted and others not, or when they
    were sealed under different data keys: one chain has one key.
    """
    encrypted = [layer.metadata.encryption is not None for layer in chain]
    if not any(encrypted):
        return None
    if not all(encrypted):
        plain = chain[encrypted.index(False)].backup.id
        raise exception.InvalidBackup(
            reason='backup %s is not encrypted but the rest of its chain '
                   '(%s) is: the chain was tampered with'
                   % (plain, chain[-1].backup.id))
    found = [open_layer(layer, source) for layer in chain]
    first = found[0]
    for layer, keys in zip(chain, found):
        if keys.chain_id != first.chain_id or not keys.same_data_key(first):
            raise exception.InvalidBackup(
                reason='backup %s is sealed under another data key than '
                       'its chain (%s): it does not belong to this chain'
                       % (layer.backup.id, chain[0].backup.id))
    return found[-1]
