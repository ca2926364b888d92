"""Client-side encryption of backups (doc/encryption.md).

``keys``: master keys (a key file, or a key manager through castellan) that
wrap the random data key of each backup chain. ``envelope`` (the engine's
side): sealing object bodies, keyed digests and the ``encryption`` section
of ``_metadata``.
"""
