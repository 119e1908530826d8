"""Storage: the only layer that imports ``lmdb`` and ``rados`` (Ceph's librados binding).

* :mod:`.base` — the typed protocols of the seam (``KvBackend``, ``Txn``, ``Cursor``,
  ``Table``, ``ChunkBackend``) and the contract a backend keeps;
* :mod:`.store` — ``Store``: a backend run with the engine's commit discipline (space
  reserve, group commit, batched scans);
* :mod:`.lmdb_env` — the LMDB backend; :mod:`.memory` — the in-memory backend;
* :mod:`.envelope` — how a chunk's bytes are encoded for storage and decoded back;
* :mod:`.chunks` — the content-addressed, reference-counted chunk store;
* :mod:`.rados_io` — ``rados://`` store URLs and batched object I/O on a Ceph cluster
  (imports ``rados`` only when it connects); :mod:`.rados_chunks` — chunks as objects of a
  data pool, indexed and queued for deletion in the metadata.
"""
