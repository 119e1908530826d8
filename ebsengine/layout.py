"""The on-disk format of an ebsengine store, in one place.

A store is a directory holding one LMDB environment (``data.mdb``, ``lock.mdb``). Everything
durable lives in that environment, so every durable change is one LMDB transaction: the
commit of that transaction is its single commit point. Writers order their work toward it:
chunks are put first, then the map entries that reference them, then reference counts and
metadata, then the commit. An aborted transaction leaves nothing behind.

Units
-----
* chunk: ``CHUNK_SIZE`` (64 KiB) bytes of a volume, the unit of dedup, compression and the
  block maps. Chunk index ``idx`` covers bytes ``[idx * CHUNK_SIZE, (idx + 1) * CHUNK_SIZE)``.
* block: ``BLOCK_SIZE`` (512 KiB), the EBS direct API's unit; block ``b`` is chunks
  ``[b * 8, b * 8 + 8)``. Volume sizes are whole GiB, so both divide every volume size.

Sub-databases (key -> value; integers are unsigned big-endian so byte order = numeric order)
---------------------------------------------------------------------------------------------
``meta``
    ``b"format"`` -> ASCII decimal ``FORMAT_VERSION``; ``b"chunk_size"`` -> ASCII decimal;
    ``b"zstd_level"`` -> ASCII decimal; ``b"next_lineage"`` -> u64 (next free lineage id).
    ``b"copying"`` (``COPY_MARKER``) -> JSON ``{"from", "since", "pid"}``: only while a store
    copy (``storage/copy.py``) fills this store; written by its first commit that holds
    data, removed by its last. A store carrying it is refused at open (an unfinished copy),
    except by the copier itself.
``chunks``
    chunk key (``fingerprint[16] | collision_no u32``) -> ``codec u8 | payload``.
    ``codec`` 0 = raw (compression did not pay), 1 = zstd frame, 2 = sealed (format 3: the
    chunk of an encrypted domain, see "Encryption" below). The fingerprint is xxh3-128 of
    the uncompressed chunk (``codec.fingerprint``); in an encrypted domain, that digest
    keyed by the domain (AES-256 of it under the domain's fingerprint key). Chunks whose
    bytes differ but whose fingerprints collide get distinct ``collision_no`` values (and a
    chunk of another domain never counts as equal): before a chunk is shared, its
    stored bytes are compared with the new bytes, so equal fingerprints alone never make two
    volumes share data (DESIGN invariant 5).
``refs``
    chunk key -> u64 reference count = number of ``maps`` values that are that key plus the
    number of patches whose base is that key.
``maps``
    ``lineage u64 | idx u32 | ~gen u32`` -> one of (told apart by length):

    * ``b""`` (0 bytes), a tombstone: the chunk reads as zeros from this generation on;
    * a chunk key (20 bytes): the chunk holds that stored chunk;
    * a *patch* (35 or 55 bytes): ``tag u8 | mask u16 | digest[16] | page key[16] |
      base`` where ``base`` is a chunk key (20 bytes) or empty (the base reads as zeros). The
      chunk reads as ``base`` with the 4 KiB pages whose bit is set in ``mask`` (bit ``p`` =
      bytes ``[p * PAGE_SIZE, (p + 1) * PAGE_SIZE)``) replaced by the pages stored in
      ``pages[page key]``. The page key is the entry's own map key (entries never move: a
      snapshot freezes a patch as it freezes any entry, with no copy); ``digest`` is a
      128-bit digest of those pages, concatenated in ascending order, and ``tag`` says which:
      ``PATCH_TAG_XXH`` (``X``, format 5) xxh3-128 (canonical, big-endian), written in
      plaintext lineages; ``PATCH_TAG`` (``P``) BLAKE2b-128, keyed in an encrypted domain
      (the only tag written there: a keyless digest of plaintext pages would be a
      fingerprint of them beside the ciphertext) and unkeyed in plaintext patches of
      formats 2-4. Readers do not need the digest; fsck checks it. Since the page key
      names the entry, equal patch values are the same entry, hence equal content.
    * a *layered patch* (format 6; ``20 + 18 n`` or ``40 + 18 n`` bytes, ``2 <= n <=
      MAX_LAYERS``): ``tag u8 | mask u16 | page key[16] | n u8 | n x (layer mask u16 |
      layer digest[16]) | base``, tag ``PATCH_TAG_LAYERS_XXH`` (``L``, xxh3-128 digests,
      plaintext) or ``PATCH_TAG_LAYERS`` (``K``, keyed BLAKE2b-128, encrypted). The pages
      of layer ``i`` (oldest first) are stored at :func:`layer_key` ``(page key, i)`` (the
      page key itself for layer 0), each layer digested like a patch's pages; ``mask`` is
      the union of the layer masks and page ``p`` reads from the newest layer holding it.
      A flush over a patch at the same map key adds a layer of just its new pages instead
      of rewriting the pages already stored (at 4 KiB random writes, a flush per second
      rewrote each page several times before a fold); a patch with ``MAX_LAYERS`` layers,
      or whose layers hold more than a chunk of pages, is rewritten as one layer.

    A value longer than a chunk key is a patch of either kind (its tag tells which).

    ``~gen`` is ``0xFFFFFFFF - gen`` so that a cursor ``set_range(lineage|idx|~G)`` lands on
    the newest entry with ``gen <= G``.
``pages``
    page key (= the map key of a patch entry; with a layer number ``u8`` >= 1 appended for
    the later layers of a layered patch) -> ``codec u8 | payload``, the pages of that
    patch or layer (``popcount(mask) * PAGE_SIZE`` bytes once decoded), codec as in
    ``chunks`` (zstd at ``PAGE_ZSTD_LEVEL`` when it saves 1/16, else raw). Written in the
    commit that writes the patch (or its layer), deleted in the commit that drops or
    replaces it (a new layer keeps those below it). A patch is the result of partial
    writes to a chunk: they cost no read or decompression of the chunk. A background *folder*
    later replaces a patch, in place (same key, same generation), with the chunk key of its
    content (one compression for all its pages); content and visibility do not change.
``gens``
    ``lineage u64 | gen u32 | idx u32`` -> ``b""``: the same entries indexed by generation,
    which makes "what changed in generations (a, b]" a range scan (changed-block tracking).
``lineages``
    lineage u64 -> JSON object (see :class:`ebsengine.block.maps.Lineage`): ``head`` (the
    generation writes go to, or null when no volume or pending snapshot owns the lineage),
    ``owner`` (volume id or pending snapshot id owning the head), ``base`` (``[lineage, gen]``
    whose data shows through where this lineage has no entry, or null), ``points`` (live
    snapshot generations: ``{gen: snapshot_id}``), ``pins`` (``{gen: n}``, generations that
    ``n`` child lineages read through), ``allocated`` (data chunks visible at the head),
    ``domain`` (format 3: the data-key domain id ``dom-<32 hex>`` of an encrypted lineage,
    absent or null for a plaintext one), ``copier`` (absent, except on a *staged copy*: a
    lineage being filled with a copy of a snapshot under a new data key, in transactions of
    its own, before the unit that makes the volume or snapshot adopts it; it names the
    copying process ``{"pid", "start", "boot"}``, its ``owner`` is a ``copy-<32 hex>`` id,
    it has a head, no base and no point. A store opened after that process died drops it.)
``volumes``
    volume id (ASCII) -> JSON volume record (``ebsengine.model.Volume`` fields plus
    ``lineage``). While an image is imported, ``importer`` names the importing process
    (``{"pid", "start", "boot"}``) and either ``state`` is ``creating`` (a new volume, until
    the import's last commit) or ``staging`` names a second lineage owned by the volume,
    loaded with the image beside the volume's own and swapped in by the last commit. A store
    opened after the importer died shows such a new volume as ``error`` and drops the staged
    lineage (the volume keeps its content).
``snapshots``
    snapshot id -> JSON snapshot record (``ebsengine.model.Snapshot`` fields plus
    ``lineage`` and ``gen``).
``service``
    ``namespace | 0x00 | key`` -> JSON, opaque to the engine (AWS model state and the like).
``blocksums``
    ``snapshot id | 0x00 | block u32`` -> ASCII checksum a client gave with a block of a
    *pending* snapshot (EBS direct API: needed to check CompleteSnapshot's aggregate).
    Written in the same commit as the block; dropped when the snapshot completes or fails.
``snaps_by_volume`` (format 2)
    ``volume id | 0x00 | snapshot id`` (ASCII) -> ``b""``: every snapshot record whose
    ``volume_id`` is set (EBS-direct snapshots have none), indexed by that volume, so that
    "the snapshots of volume V" is one prefix scan: O(result), not O(all snapshots). Written
    in the same transaction as the snapshot record; a snapshot's ``volume_id`` never changes,
    and deleting the record deletes its entry. The volume may be gone (snapshots outlive it).

Encryption (format 3)
---------------------
An encrypted lineage names a data-key *domain* (``ebsengine.kms``: a random 256-bit data key
stored only wrapped by a KMS key, which is itself sealed by the master key outside the
store). A lineage and its base always share one domain (or are both plaintext): a volume
that changes key or encrypts a plaintext snapshot gets a full copy, never a base in another
domain. Every chunk and pages value written for an encrypted lineage is::

    CODEC_SEALED u8 | domain tag[16] | salt[32] | AES-256-GCM ciphertext | tag[16]

the AEAD of the plaintext encoding (``codec u8 | payload`` as above: compression first),
under a one-message key derived from the domain's sealing key and the random salt (keyed
BLAKE2b-256, person ``ebsengine/value``: a nonce never repeats under one key), with AAD =
``"ebsengine/value/v1\0" | domain tag |`` ``chunk\0`` and the chunk's key (fingerprint and
collision number), or ``pages\0`` and the page key. A value swapped for another, moved to
another domain or changed in any bit does not open: ``CorruptStore``.
Chunk keys of a domain use keyed fingerprints, so dedup stays within the domain and a name
says nothing about the plaintext; a patch's digest is BLAKE2b-128 keyed the same way. Zero
chunks are never stored, in any domain.

Stores on Ceph RADOS (``rados://PREFIX?...``)
---------------------------------------------
The same tables, with the same keys, values and invariants, kept in two pools instead of
one LMDB file:

* the metadata pool (``PREFIX.meta``, replicated: RADOS has no omap on erasure-coded pools)
  holds every table as a copy-on-write B+tree of immutable node objects ``n.<hex id>`` and
  one root object ``kv.root`` naming each table's root node and the commit sequence number;
  the root write (a compound op asserting the root's object version) is the single commit
  point of a transaction, nodes are written before it, and nodes a commit stopped using are
  listed in the root's omap and removed after a grace period (a sweep that removes objects
  first rewrites the omap key ``w.fence``, so that a writer whose lock ran out under it
  cannot commit past the sweep: its swap names the old version). Node, root and freed-list
  formats: ``storage/cowtree.py`` and ``storage/rados_kv.py``. Nodes are cut at 32 KiB and
  values over 1 KiB are blobs, except in ``pages``, whose leaves go to 128 KiB and keep page
  sets of up to 16 KiB inline (``rados_kv.TABLE_SHAPES``; R1 checks each tree against its
  shape; a tree of the default shape is a valid ``pages`` tree);
* the chunk bytes of ``chunks`` are in the data pool (``PREFIX.data``), written and durable
  before the commit that references them: in *packs*, objects ``p.<hex pack id>`` holding
  the encoded values of the chunks one write transaction put (up to ``pack=`` MiB each,
  default 4) and a trailer listing them, or alone, one object ``c.<hex chunk key>`` per
  chunk (``pack=0``, and every chunk stored before format 4). Four more tables exist only
  on RADOS stores: ``rados_index`` (chunk key -> location: ``b""`` for a chunk alone, else
  ``pack id[16] | offset u32 | length u32``; the chunks that are stored, the RADOS
  counterpart of ``chunks``'s keys, written in the commit that puts the bytes),
  ``rados_gc`` (chunk key -> deadline u64 ms | location: chunks whose last reference a
  commit dropped, kept until the deadline; a later put of the key within the grace revives
  it), ``rados_packs`` (pack id -> ``count u32 | live u64 | size u64``: the entries of
  ``rados_index`` and ``rados_gc`` naming the pack, their bytes, the end of its last chunk)
  and ``rados_pack_gc`` (pack id -> deadline: packs no entry names, removed after the
  deadline). Pack trailer and the rules that keep these in step:
  ``storage/rados_chunks.py``. An object that none of these tables names is an orphan of a
  transaction that did not commit (or of a sweep that died after its commit); a sweep
  removes it once older than the grace.

Format history and migration
----------------------------
* 1: no ``snaps_by_volume``, no ``pages``, no patch values in ``maps``.
* 2: adds ``snaps_by_volume`` and partial-chunk writes as patches (``pages``, patch ``maps``
  values). A read-write open of a format-1 store creates ``pages`` (empty: every format-1
  map is a valid format-2 map), builds ``snaps_by_volume`` from the ``snapshots`` records and
  writes format 2, in one transaction (``storage/migrate.py``); a read-only open of a
  format-1 store is refused with a message saying to open it read-write once.
* 3: encrypted lineages (``domain``, ``CODEC_SEALED`` values). Every format-2 store is a valid
  format-3 store; a read-write open writes the new format number (older code then refuses it
  instead of misreading a sealed value).
* 4: chunk packs on RADOS stores (``rados_packs``, ``rados_pack_gc``, locations in
  ``rados_index`` and ``rados_gc``). Every format-3 store is a valid format-4 store (its
  chunks are alone, ``b""`` locations); a read-write open writes 4, so older code refuses a
  store whose chunks it would look for in the wrong objects.
* 5: plaintext patches carry an xxh3-128 digest of their pages (tag ``PATCH_TAG_XXH``; at
  4 KiB random writes BLAKE2b was about a tenth of a flush's CPU). Every format-4 store is
  a valid format-5 store (its patches keep tag ``PATCH_TAG`` and their BLAKE2b digests,
  checked as such, until a write or a fold replaces them); a read-write open writes 5, so
  older code, which knows one tag, refuses a store it would report as corrupt.
* 6: layered patches (tags ``PATCH_TAG_LAYERS_XXH`` and ``PATCH_TAG_LAYERS``, pages rows at
  17-byte layer keys). Every format-5 store is a valid format-6 store (it has no layered
  patch); a read-write open writes 6, so older code refuses a store whose patches it would
  call malformed.

How a point in time is read
---------------------------
A lineage is one volume's history. Each snapshot of it freezes a generation: the snapshot
gets generation ``H`` (the head) and the head moves to ``H + 1``. Writes to the volume put
entries at the head generation, replacing an entry of the same generation in place. The
content of chunk ``idx`` at generation ``G`` is the newest entry with ``gen <= G``; if there
is none it comes from ``base`` (a volume created from a snapshot starts as an empty lineage
whose base is that snapshot: O(1)), and with no base it reads as zeros. Lookup cost does
not depend on how many snapshots the lineage has.

"Live points" of a lineage are its snapshot generations, its pinned generations and its
head. Deleting a point ``p`` with predecessor ``q`` and successor ``s`` merges interval
``(q, p]`` into ``(p, s]``: an entry of the older interval that the newer interval also
holds is no longer visible to anybody and is dropped (its chunk reference released); the
others stay, now serving ``s``. With no successor the whole interval is dropped. The cost is
O(entries of the deleted interval).

Invariants (``check.py`` verifies each one; ``fsck`` reports every violation)
------------------------------------------------------------------------------
I1  ``meta`` holds this ``FORMAT_VERSION`` and ``CHUNK_SIZE``.
I2  Every ``maps`` value is ``b""`` or the key of a chunk present in ``chunks``.
I3  Every chunk decodes to exactly ``CHUNK_SIZE`` bytes, is not all zeros, and its
    fingerprint equals the first 16 bytes of its key.
I4  ``refs[k]`` equals the number of ``maps`` values equal to ``k``, for every chunk; no
    chunk has zero references and no ``refs`` entry lacks its chunk (no orphans).
I5  ``gens`` holds exactly the ``(lineage, gen, idx)`` triples of ``maps``.
I6  Every ``maps`` entry belongs to a known lineage; its generation is at most the
    lineage's newest live point; between two consecutive live points (and below the first)
    there is at most one entry per chunk index.
I7  Every volume names a lineage whose ``owner`` is that volume (and so does its
    ``staging`` lineage, if any); a staged copy (``copier``) is owned by its ``copy-`` id,
    and nothing else names it; every snapshot names a
    lineage and a generation that is a live point of it mapped to that snapshot; every
    ``base`` names a known lineage, and ``pins`` count exactly the lineages whose base is that
    generation. A lineage with no live point and no pin does not exist. ``snaps_by_volume``
    holds exactly one entry per snapshot record with a ``volume_id``, and nothing else.
I8  ``allocated`` of a lineage with a head equals the number of data chunks visible there.
I9  ``blocksums`` entries belong to pending snapshots and name blocks inside them.
I10 Every patch value is well formed: its page key is its own map key, its mask is not
    empty, its base (if any) is a stored chunk (counted in I4); a layered patch has 2 to
    ``MAX_LAYERS`` layers, none empty, whose masks' union is its mask; ``pages`` holds
    exactly the page keys (layer keys) of the patch entries (layers); each ``pages`` value
    decodes to ``popcount(mask)`` pages of its patch or layer, whose digest by the patch's
    tag is the patch's or layer's digest (xxh3-128 for ``PATCH_TAG_XXH`` and
    ``PATCH_TAG_LAYERS_XXH``, BLAKE2b-128 for ``PATCH_TAG`` and ``PATCH_TAG_LAYERS``, keyed
    in an encrypted domain); a patch of an encrypted lineage has tag ``PATCH_TAG`` or
    ``PATCH_TAG_LAYERS``.
I11 A lineage's ``domain`` equals its base lineage's and names a domain record
    (``service``: ``kms.domains``); every domain record is named by some lineage (it is
    deleted in the transaction that destroys its domain's last lineage); every chunk and
    pages value a lineage refers to is sealed in that lineage's domain, or plaintext when it
    has none (reads check it too, and refuse such a value as ``CorruptStore``). With the
    keys, every sealed value opens (I3 and I10 are checked on the plaintext); without them,
    fsck checks the structure and reports how many values it could not verify.
R1  (``rados://`` stores) The root decodes and every table's tree is sound: each node it
    reaches exists and passes its checksum, keys are ordered within and across nodes and
    between separators, levels are consistent, and the tree's entry count and byte count
    match its leaves (``cowtree.check_tree``). On RADOS stores, I2-I4's "present in
    ``chunks``" means "indexed in ``rados_index``, with its object in the data pool".
R2  (``rados://`` stores) Every location in ``rados_index`` and ``rados_gc`` is well formed
    and names a pack recorded in ``rados_packs``, inside its recorded size; each record's
    count and bytes are exactly those of the entries naming it; no record is unnamed or
    also queued in ``rados_pack_gc``; every recorded pack's object exists and holds at least
    its chunks and a trailer (``RadosChunks.check``).

"""

from __future__ import annotations

import struct

FORMAT_VERSION = 6
CHUNK_SIZE = 64 * 1024
BLOCK_SIZE = 512 * 1024
CHUNKS_PER_BLOCK = BLOCK_SIZE // CHUNK_SIZE
GIB = 1024**3
CHUNKS_PER_GIB = GIB // CHUNK_SIZE

MAX_CHUNKS = 1 << 32  # chunk indexes are u32 (64 KiB x 2^32 = 256 TiB)
FP_SIZE = 16
KEY_SIZE = FP_SIZE + 4
MAX_GEN = 0xFFFFFFFF

CODEC_RAW = 0
CODEC_ZSTD = 1
CODEC_SEALED = 2  # format 3: an encrypted value (see "Encryption" above)
DOMAIN_TAG_SIZE = 16

PAGE_SIZE = 4096  # the write unit of a patch
PAGES_PER_CHUNK = CHUNK_SIZE // PAGE_SIZE
FULL_MASK = (1 << PAGES_PER_CHUNK) - 1
PAGE_ZSTD_LEVEL = 1
PATCH_TAG = 0x50  # "P": BLAKE2b-128 digest (keyed in an encrypted domain)
PATCH_TAG_XXH = 0x58  # "X" (format 5): xxh3-128 digest, plaintext lineages only
PATCH_TAG_LAYERS_XXH = 0x4C  # "L" (format 6): layered, xxh3-128 digests (plaintext)
PATCH_TAG_LAYERS = 0x4B  # "K" (format 6): layered, BLAKE2b-128 digests (keyed: encrypted)
PATCH_TAGS = (PATCH_TAG, PATCH_TAG_XXH)
LAYERED_TAGS = (PATCH_TAG_LAYERS_XXH, PATCH_TAG_LAYERS)
#: the layered tag of each one-layer tag, and the digest kind (a one-layer tag) of each tag
LAYERED_OF = {PATCH_TAG_XXH: PATCH_TAG_LAYERS_XXH, PATCH_TAG: PATCH_TAG_LAYERS}
DIGEST_OF = {PATCH_TAG: PATCH_TAG, PATCH_TAG_XXH: PATCH_TAG_XXH,
             PATCH_TAG_LAYERS: PATCH_TAG, PATCH_TAG_LAYERS_XXH: PATCH_TAG_XXH}
MAX_LAYERS = 8
LAYER_SIZE = 2 + 16  # layer mask, layer digest
LAYERED_SIZE = 1 + 2 + 16 + 1  # tag, mask, page key, layer count (then the layers, the base)
MAP_KEY_SIZE = 16
DIGEST_SIZE = 16
PATCH_SIZE = 1 + 2 + DIGEST_SIZE + MAP_KEY_SIZE  # without its base

COPY_MARKER = b"copying"  # meta key of an unfinished store copy (see ``meta`` above)

DBS = ("meta", "chunks", "refs", "maps", "gens", "lineages", "volumes", "snapshots", "service",
       "blocksums", "snaps_by_volume", "pages")

_MAPKEY = struct.Struct(">QII")
_PATCH = struct.Struct(">BH16s16s")
_LAYER = struct.Struct(">H16s")
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
TOMBSTONE = b""


def chunk_key(fp: bytes, collision_no: int) -> bytes:
    """Key of a chunk in ``chunks``/``refs``: its fingerprint and a collision number."""
    return fp + _U32.pack(collision_no)


def map_key(lineage: int, idx: int, gen: int) -> bytes:
    """Key of a ``maps`` entry; newer generations of one index sort first."""
    return _MAPKEY.pack(lineage, idx, MAX_GEN - gen)


def parse_map_key(key: bytes) -> tuple[int, int, int]:
    """Inverse of :func:`map_key`: ``(lineage, idx, gen)``."""
    lineage, idx, inv = _MAPKEY.unpack(key)
    return lineage, idx, MAX_GEN - inv


def gen_key(lineage: int, gen: int, idx: int) -> bytes:
    """Key of a ``gens`` entry (changed-block index)."""
    return _MAPKEY.pack(lineage, gen, idx)


def parse_gen_key(key: bytes) -> tuple[int, int, int]:
    """Inverse of :func:`gen_key`: ``(lineage, gen, idx)``."""
    return _MAPKEY.unpack(key)


def lineage_key(lineage: int) -> bytes:
    return _U64.pack(lineage)


def u64(n: int) -> bytes:
    return _U64.pack(n)


def read_u64(b: bytes) -> int:
    return int(_U64.unpack(b)[0])


def blocksum_key(snapshot_id: str, block: int) -> bytes:
    return snapshot_id.encode() + b"\x00" + _U32.pack(block)


def snap_volume_key(volume_id: str, snapshot_id: str) -> bytes:
    """Key of a ``snaps_by_volume`` entry."""
    return volume_id.encode() + b"\x00" + snapshot_id.encode()


def snap_volume_prefix(volume_id: str) -> bytes:
    """Prefix of every ``snaps_by_volume`` entry of one volume."""
    return volume_id.encode() + b"\x00"


def service_key(namespace: str, key: str) -> bytes:
    if "\x00" in namespace:
        raise ValueError("namespace must not contain NUL")
    return namespace.encode() + b"\x00" + key.encode()


def is_patch(value: bytes) -> bool:
    """Whether a ``maps`` value is a patch, one-layer or layered (else a chunk key or a
    tombstone)."""
    return len(value) > KEY_SIZE


def patch_value(mask: int, digest: bytes, page_key: bytes, base: bytes | None,
                tag: int = PATCH_TAG_XXH) -> bytes:
    """A patch ``maps`` value (see ``maps``/``pages`` above); ``tag`` names the digest."""
    if tag not in PATCH_TAGS:
        raise ValueError(f"unknown patch tag {tag:#x}")
    return _PATCH.pack(tag, mask, digest, page_key) + (base or b"")


def patch_tag(value: bytes) -> int:
    """The tag of a patch value: which digest it carries (see ``maps`` above)."""
    return value[0]


def _layer_count(value: bytes) -> int:
    """Layers of a layered patch value (ValueError if its length or count is not one)."""
    n = value[LAYERED_SIZE - 1] if len(value) >= LAYERED_SIZE else 0
    if value[0] not in LAYERED_TAGS or not 2 <= n <= MAX_LAYERS \
            or len(value) - LAYERED_SIZE - n * LAYER_SIZE not in (0, KEY_SIZE):
        raise ValueError(f"not a patch value: {value.hex()}")
    return n


def parse_patch(value: bytes) -> tuple[int, bytes, bytes, bytes | None]:
    """Inverse of :func:`patch_value`: ``(mask, digest, page key, base or None)`` (for a
    layered patch: the union mask, and ``b""`` for the digest: see :func:`patch_layers`);
    ValueError if ``value`` is not a well-formed patch (an unknown tag included)."""
    if len(value) in (PATCH_SIZE, PATCH_SIZE + KEY_SIZE) and value[0] in PATCH_TAGS:
        _, mask, digest, page_key = _PATCH.unpack_from(value)
        return mask, digest, page_key, value[PATCH_SIZE:] or None
    if not is_patch(value) or value[0] not in LAYERED_TAGS:
        raise ValueError(f"not a patch value: {value.hex()}")
    n = _layer_count(value)
    mask = _U16.unpack_from(value, 1)[0]
    end = LAYERED_SIZE + n * LAYER_SIZE
    return mask, b"", value[3:19], value[end:] or None


def layer_key(page_key: bytes, i: int) -> bytes:
    """Where the pages of layer ``i`` of a patch are stored (``pages``)."""
    return page_key if i == 0 else page_key + bytes((i,))


def patch_layers(value: bytes) -> list[tuple[bytes, int, bytes]]:
    """``(pages key, mask, digest)`` of each layer of a patch, oldest first (one for a
    one-layer patch); ValueError if ``value`` is not a well-formed patch."""
    mask, digest, page_key, _ = parse_patch(value)
    if value[0] in PATCH_TAGS:
        return [(page_key, mask, digest)]
    end = LAYERED_SIZE + value[LAYERED_SIZE - 1] * LAYER_SIZE
    return [(layer_key(page_key, i), m, d)
            for i, (m, d) in enumerate(_LAYER.iter_unpack(value[LAYERED_SIZE:end]))]


def lays_on(value: bytes, prior: bytes) -> bool:
    """Whether patch ``value`` is patch ``prior`` with one more layer on top (what
    :func:`add_layer` makes of it): the same page key, base and layers below."""
    if not value or value[0] not in LAYERED_TAGS or not is_patch(prior) \
            or layer_count(value) != layer_count(prior) + 1 or chunk_of(value) != chunk_of(prior):
        return False
    n = layer_count(prior)
    if prior[0] in LAYERED_TAGS:
        return value[3:19] == prior[3:19] and \
            value[LAYERED_SIZE:LAYERED_SIZE + n * LAYER_SIZE] == \
            prior[LAYERED_SIZE:LAYERED_SIZE + n * LAYER_SIZE]
    return value[3:19] == prior[3 + DIGEST_SIZE:PATCH_SIZE] and \
        value[LAYERED_SIZE:LAYERED_SIZE + LAYER_SIZE] == prior[1:3 + DIGEST_SIZE]


def layer_count(value: bytes) -> int:
    """Layers of a well-formed patch value (1 for a one-layer patch)."""
    return value[LAYERED_SIZE - 1] if value[0] in LAYERED_TAGS else 1


def layer_masks(value: bytes) -> list[int]:
    """The mask of each layer of a well-formed patch value, oldest first."""
    if value[0] not in LAYERED_TAGS:
        return [_U16.unpack_from(value, 1)[0]]
    return [_U16.unpack_from(value, LAYERED_SIZE + i * LAYER_SIZE)[0]
            for i in range(value[LAYERED_SIZE - 1])]


def add_layer(prior: bytes, mask: int, digest: bytes, tag: int) -> bytes:
    """The layered patch ``maps`` value of well-formed patch ``prior`` (at its own page key)
    with one more layer ``(mask, digest)`` of layered tag ``tag`` on top: what
    :func:`layered_value` makes of its layers and that one, without parsing them."""
    base = chunk_of(prior) or b""
    if prior[0] in LAYERED_TAGS:
        n = prior[LAYERED_SIZE - 1]
        below = prior[LAYERED_SIZE:LAYERED_SIZE + n * LAYER_SIZE]
    else:
        n, below = 1, prior[1:3] + prior[3:3 + DIGEST_SIZE]
    if tag not in LAYERED_TAGS or n + 1 > MAX_LAYERS:
        raise ValueError(f"bad layered patch: tag {tag:#x}, {n + 1} layers")
    union = _U16.unpack_from(prior, 1)[0] | mask
    page_key = prior[3 + DIGEST_SIZE:PATCH_SIZE] if prior[0] in PATCH_TAGS else prior[3:19]
    return b"".join([struct.pack(">BH16sB", tag, union, page_key, n + 1), below,
                     _LAYER.pack(mask, digest), base])


def layered_value(tag: int, layers: list[tuple[int, bytes]], page_key: bytes,
                  base: bytes | None) -> bytes:
    """A layered patch ``maps`` value of ``(mask, digest)`` layers, oldest first."""
    if tag not in LAYERED_TAGS or not 2 <= len(layers) <= MAX_LAYERS:
        raise ValueError(f"bad layered patch: tag {tag:#x}, {len(layers)} layers")
    union = 0
    for m, _ in layers:
        union |= m
    return b"".join([struct.pack(">BH16sB", tag, union, page_key, len(layers)),
                     *[_LAYER.pack(m, d) for m, d in layers], base or b""])


def chunk_of(value: bytes) -> bytes | None:
    """The chunk key a ``maps`` value holds a reference on (a chunk key, a patch's base), or
    None."""
    if len(value) == KEY_SIZE:
        return value
    if len(value) == PATCH_SIZE + KEY_SIZE and value[0] in PATCH_TAGS:
        return value[PATCH_SIZE:]
    if len(value) > LAYERED_SIZE and value[0] in LAYERED_TAGS \
            and (len(value) - LAYERED_SIZE) % LAYER_SIZE == KEY_SIZE % LAYER_SIZE:
        return value[-KEY_SIZE:]
    return None


def mask_pages(mask: int) -> list[int]:
    """Page numbers set in a patch mask, ascending."""
    return [p for p in range(PAGES_PER_CHUNK) if mask >> p & 1]
