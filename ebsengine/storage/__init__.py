"""Storage: the only layer that imports ``lmdb``.

* :mod:`.lmdb_env` — the LMDB environment and its transactions (``Store``);
* :mod:`.envelope` — how a chunk's bytes are encoded for storage and decoded back;
* :mod:`.chunks` — the content-addressed, reference-counted chunk store.
"""
