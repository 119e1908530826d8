"""The one error hierarchy of ebsengine.

Every failure a caller can act on is an :class:`EbsError` subclass carrying

* ``code``: the EC2 error code where EC2 has one (``InvalidVolume.NotFound``, ...), so the
  EC2 endpoint renders it without a second table of meanings;
* ``exit_code``: what the CLI exits with (scripts rely on these; see ``cli.py``).

Boundaries translate these classes, each with one table: the HTTP API maps ``code`` to an
HTTP status and classes to the EBS direct API's reasons (``aws/errors.py``), the NBD server
maps classes to errno values. Classes that mean "bad argument"
also derive from the matching builtin (``ValueError``, ``KeyError``, ``PermissionError``)
so plain Python callers can catch them idiomatically.
"""

from __future__ import annotations


class EbsError(Exception):
    """Root of every ebsengine error."""

    code: str = "InternalError"
    exit_code: int = 1

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# --- lookups -------------------------------------------------------------------------------


class NotFound(EbsError, KeyError):
    """A named resource does not exist."""

    code = "NotFound"
    exit_code = 3

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class VolumeNotFound(NotFound):
    code = "InvalidVolume.NotFound"


class SnapshotNotFound(NotFound):
    code = "InvalidSnapshot.NotFound"


class MalformedId(EbsError, ValueError):
    """An id that cannot name a resource of the expected kind (``InvalidVolumeID.Malformed``)."""

    code = "InvalidParameterValue"
    exit_code = 2


# --- bad arguments -------------------------------------------------------------------------


class InvalidParameter(EbsError, ValueError):
    """A value is out of its allowed range or badly formed."""

    code = "InvalidParameterValue"
    exit_code = 2


class InvalidParameterCombination(InvalidParameter):
    code = "InvalidParameterCombination"


class MissingParameter(InvalidParameter):
    code = "MissingParameter"


class InvalidVolumeSize(InvalidParameter):
    """A volume size outside its limits, or smaller than the size it must hold (a snapshot's,
    the volume's current size)."""


class InvalidBlock(InvalidParameter):
    """A block index beyond a snapshot's size, or block data that is not one block."""


class UnrelatedSnapshots(InvalidParameter):
    """Two snapshots compared for changed blocks where neither descends from the other."""


class InvalidTag(InvalidParameter):
    """A tag key or value outside the tag rules (length, reserved ``aws:`` prefix, ...)."""


class TagLimitExceeded(InvalidTag):
    """More tags than a resource may carry."""

    code = "TagLimitExceeded"


class IdempotencyMismatch(InvalidParameter):
    """A client token reused with different parameters."""

    code = "IdempotentParameterMismatch"


class OutOfRange(InvalidParameter):
    """A device access (offset, length) falls outside the device; nothing was read or written."""

    code = "InvalidParameterValue"


class Ec2Error(EbsError):
    """A refusal by the EC2 layer's rules (``ebsengine.cloud``), carrying AWS's own code
    (``InvalidKeyPair.Duplicate``, ``IncorrectInstanceState`` ...): EC2 has dozens of codes
    that mean nothing outside one action, so they travel as data, not as classes.

    Codes ending in ``NotFound`` exit the CLI like :class:`NotFound`; state refusals
    (``Incorrect*State``, ``*InUse``, ``DependencyViolation``, ``OperationNotPermitted``) like
    :class:`IncorrectState`; the rest like a bad argument."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(message or code)
        self.code = code
        if code.endswith("NotFound"):
            self.exit_code = 3
        elif ("Incorrect" in code or "InUse" in code or code in (
                "DependencyViolation", "OperationNotPermitted")):
            self.exit_code = 4
        else:
            self.exit_code = 2


class KmsError(EbsError):
    """A refusal by the key service (``ebsengine.kms``), carrying KMS's own code
    (``NotFoundException``, ``DisabledException``, ``KMSInvalidStateException``,
    ``InvalidCiphertextException`` ...), as :class:`Ec2Error` carries EC2's: the HTTP layer
    renders the code as is. ``status`` is the HTTP status KMS answers it with.

    Raised too by :meth:`ebsengine.kms.KeyService.domain_key` when a data key cannot be
    unwrapped because its KMS key is disabled (``DisabledException``), pending deletion
    (``KMSInvalidStateException``) or deleted (``NotFoundException``): nothing is lost while
    the key exists, enabling it (or cancelling its deletion) makes the data key readable."""

    def __init__(self, code: str, message: str = "", *, status: int = 400) -> None:
        super().__init__(message or code)
        self.code = code
        self.status = status
        if code == "NotFoundException":
            self.exit_code = 3
        elif code in ("DisabledException", "KMSInvalidStateException", "AccessDeniedException",
                      "NotAuthorizedException"):
            self.exit_code = 4
        elif code == "KMSInternalException":
            self.exit_code = 1
        else:
            self.exit_code = 2


class MasterKeyError(EbsError):
    """The master key file (which seals every KMS key of a store, see ``ebsengine.kms``)
    cannot be used: missing while the store holds keys sealed under one, unreadable,
    malformed, or readable by others. Nothing in the store was changed."""

    code = "MasterKeyError"
    exit_code = 7


class WrongMasterKey(MasterKeyError):
    """The master key file is not the one the store's KMS keys are sealed under (the store's
    check value does not open with it). Nothing in the store was changed."""

    code = "WrongMasterKey"


# --- state ---------------------------------------------------------------------------------


class IncorrectState(EbsError):
    """The resource is not in a state that allows the operation."""

    code = "IncorrectState"
    exit_code = 4


class VolumeInUse(IncorrectState):
    code = "VolumeInUse"


class AttachmentNotFound(IncorrectState):
    """A detach from an instance the volume is not attached to."""

    code = "InvalidAttachment.NotFound"


class ReadOnlyDevice(EbsError, PermissionError):
    """A write, trim or zero was sent to a read-only device (a snapshot)."""

    code = "OperationNotPermitted"
    exit_code = 4


class Closed(EbsError):
    """The device or engine was closed."""

    code = "IncorrectState"
    exit_code = 4


# --- storage -------------------------------------------------------------------------------


class StoreFull(EbsError):
    """The store cannot grow any further (LMDB map at its limit or the disk is full).

    The operation that hit it was rolled back as a whole.
    """

    code = "InsufficientVolumeCapacity"
    exit_code = 5


class StoreLocked(EbsError):
    """Another process holds the store in a way that excludes this request."""

    code = "Unavailable"
    exit_code = 5


class StoreOwned(StoreLocked):
    """Another process owns the store (``ebsengine serve``, or an engine with open devices:
    see :mod:`ebsengine.storage.owner`); the message names it (pid and command line).
    Nothing was changed. Go through the owner (the CLI does, over its control socket), open
    the store read-only, or stop the owner first."""

    code = "StoreOwned"


class BackendUnavailable(EbsError):
    """The storage backend could not be reached in time (a Ceph cluster that is down, its
    monitors or the OSDs holding the object unreachable, or the client's timeout passed):
    the message says what failed. Nothing stored was lost. A write that timed out may still
    take effect once the cluster answers again (a timeout does not take back what was sent):
    the engine's transaction that hit it was not committed, and objects it wrote are
    unreferenced until a sweep removes them. Retry once the cluster is back. The HTTP
    endpoint answers it with 503 (``Unavailable``), NBD with EIO."""

    code = "Unavailable"
    exit_code = 9


class InsecureStore(EbsError):
    """The store's directory or one of its files is open to its group or to others (mode
    beyond 0700 for the directory, 0600 for files): the store is its owner's alone, as
    PostgreSQL's data directory is. Nothing was changed; ``--fix-permissions``
    (``Engine(path, fix_permissions=True)``) tightens the modes and opens it."""

    code = "InsecureStore"
    exit_code = 8


class KeyUnavailable(EbsError):
    """Encrypted data was asked for whose data key this process does not hold: its KMS key
    has not been unlocked here (the engine unwraps it through KMS when a volume, snapshot or
    export of that domain is opened, and refuses then if the key is disabled or pending
    deletion). Nothing is lost."""

    code = "KMS.DisabledException"
    exit_code = 4


class CorruptStore(EbsError):
    """The store violates one of its invariants (see ``layout.py``); run ``ebsengine fsck``."""

    code = "InternalError"
    exit_code = 6


class FormatError(CorruptStore):
    """The store was written by an incompatible format version."""
