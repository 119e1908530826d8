"""API errors and the one translation table from engine errors to AWS code + HTTP status.

The engine's :class:`~ebsengine.errors.EbsError` already carries the EC2 error code; this
module only adds what the wire needs: the HTTP status of each code (EC2 query protocol)
and, for the EBS direct APIs (rest-json), the exception name, status and ``Reason`` of each
engine error class (the engine speaks no EBS-direct reasons itself).
"""

from __future__ import annotations

from ebsengine import errors as engine_errors

#: HTTP status of an EC2 error code; anything not listed is a client error (400).
EC2_STATUS: dict[str, int] = {
    "DryRunOperation": 412,
    "UnauthorizedOperation": 403,
    "AuthFailure": 401,
    "InternalError": 500,
    "Unavailable": 503,
    "RequestLimitExceeded": 503,
}


class ApiError(Exception):
    """A request refused with an AWS error code; nothing was changed.

    ``code``: the AWS code (``InvalidVolume.NotFound``, ``ValidationException`` ...);
    ``status``: the HTTP status (defaults per protocol when None); ``reason``: the EBS
    direct APIs' ``Reason`` field (rest-json only).
    """

    def __init__(self, code: str, message: str = "", *, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def kms_ec2_error(exc: engine_errors.KmsError) -> tuple[str, str]:
    """``(EC2 code, message)`` of a KMS refusal met by an EC2 action (CreateVolume,
    CopySnapshot, RunInstances, ModifyEbsDefaultKmsKeyId ...).

    AWS checks a KmsKeyId asynchronously: the call returns and the volume or instance then
    fails (a launch's StateReason is ``Client.InvalidKMSKey.InvalidState: The KMS key
    provided is in an incorrect state``; a volume vanishes). Here the key is checked in the
    call and the call is refused with nothing made, in EC2's words for the same causes:

    * a key that does not exist (``NotFoundException``), or one EBS cannot use (asymmetric,
      HMAC: ``InvalidKeyUsageException``): ``InvalidParameterValue``, EC2's code for a
      parameter value it rejects, with its "Value (...) for parameter kmsKeyId is invalid"
      shape;
    * a disabled or pending-deletion key (``DisabledException``,
      ``KMSInvalidStateException``) or one the caller may not use: ``InvalidKMSKey.InvalidState``,
      the code of the launch failure above without its ``Client.`` prefix.
    """
    if exc.code in ("NotFoundException", "InvalidKeyUsageException", "ValidationException",
                    "InvalidArnException"):
        return "InvalidParameterValue", f"Value for parameter kmsKeyId is invalid. {exc.message}"
    return "InvalidKMSKey.InvalidState", f"The KMS key provided is in an incorrect state: {exc.message}"


def ec2_error(exc: BaseException) -> tuple[str, str, int]:
    """``(code, message, http status)`` of any exception raised while serving an EC2 action."""
    if isinstance(exc, ApiError):
        return exc.code, exc.message, exc.status or EC2_STATUS.get(exc.code, 400)
    if isinstance(exc, engine_errors.KmsError):
        code, message = kms_ec2_error(exc)
        return code, message, 400
    if isinstance(exc, engine_errors.EbsError):
        code = exc.code
        return code, exc.message or code, EC2_STATUS.get(code, 400)
    return "InternalError", "An internal error has occurred", 500


#: engine error class -> (EBS exception, HTTP status, Reason); first match wins.
_EBS_TABLE: list[tuple[type[BaseException], str, int, str | None]] = [
    # the store's backend (a Ceph cluster) is away, or another process holds what the
    # request needs: nothing was changed and a retry may work. The ebs model has no shape
    # for this; AWS's front ends answer it, for every rest-json service, with the unmodelled
    # 503 ServiceUnavailableException, which botocore retries (503 is a transient status in
    # both its legacy and standard retry modes), never the 500 of a failure of our own
    (engine_errors.BackendUnavailable, "ServiceUnavailableException", 503, None),
    (engine_errors.StoreLocked, "ServiceUnavailableException", 503, None),
    (engine_errors.SnapshotNotFound, "ResourceNotFoundException", 404, "SNAPSHOT_NOT_FOUND"),
    (engine_errors.NotFound, "ResourceNotFoundException", 404, "DEPENDENCY_RESOURCE_NOT_FOUND"),
    (engine_errors.StoreFull, "ServiceQuotaExceededException", 402, "DEPENDENCY_SERVICE_QUOTA_EXCEEDED"),
    (engine_errors.IdempotencyMismatch, "ConflictException", 409, None),
    (engine_errors.InvalidBlock, "ValidationException", 400, "INVALID_BLOCK"),
    (engine_errors.InvalidVolumeSize, "ValidationException", 400, "INVALID_VOLUME_SIZE"),
    (engine_errors.UnrelatedSnapshots, "ValidationException", 400, "UNRELATED_SNAPSHOTS"),
    (engine_errors.InvalidTag, "ValidationException", 400, "INVALID_TAG"),
    (engine_errors.InvalidParameter, "ValidationException", 400, "INVALID_PARAMETER_VALUE"),
    (engine_errors.MalformedId, "ValidationException", 400, "INVALID_SNAPSHOT_ID"),
    (engine_errors.IncorrectState, "ValidationException", 400, "INVALID_SNAPSHOT_ID"),
]

_EBS_STATUS: dict[str, int] = {
    "ValidationException": 400,
    "ResourceNotFoundException": 404,
    "ConflictException": 409,
    "AccessDeniedException": 403,
    "RequestThrottledException": 400,
    "ServiceQuotaExceededException": 402,
    "ConcurrentLimitExceededException": 400,
    "InternalServerException": 500,
    "ServiceUnavailableException": 503,
}


def ebs_error(exc: BaseException) -> tuple[str, str, int, str | None]:
    """``(exception name, message, http status, reason)`` for an EBS direct-API failure.

    A KMS refusal while reading or writing blocks (the snapshot's key disabled, pending
    deletion or gone: EBS cannot decrypt its data key) is a failure of a resource EBS depends
    on: ``AccessDeniedException`` / ``DEPENDENCY_ACCESS_DENIED``, or for a key that no longer
    exists ``ResourceNotFoundException`` / ``DEPENDENCY_RESOURCE_NOT_FOUND`` (the reasons the
    ebs model lists for those exceptions). StartSnapshot's own key errors are
    ``INVALID_CUSTOMER_KEY`` (aws/ebs.py)."""
    if isinstance(exc, ApiError):
        return exc.code, exc.message, exc.status or _EBS_STATUS.get(exc.code, 400), exc.reason
    if isinstance(exc, engine_errors.KmsError):
        if exc.code == "NotFoundException":
            return "ResourceNotFoundException", str(exc), 404, "DEPENDENCY_RESOURCE_NOT_FOUND"
        return "AccessDeniedException", str(exc), 403, "DEPENDENCY_ACCESS_DENIED"
    for cls, code, status, reason in _EBS_TABLE:
        if isinstance(exc, cls):
            return code, str(exc) or code, status, reason
    return "InternalServerException", "An internal error has occurred", 500, None


class AuthFailed(Exception):
    """A request's signature refused (``serve --auth sigv4``); ``kind`` says how:
    ``missing`` (unsigned), ``incomplete`` (malformed), ``unknown_key``, ``signature`` (does
    not match, or a wrong scope), ``expired`` (outside the clock-skew window or past
    X-Amz-Expires). :func:`auth_error` turns it into the protocol's error."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


#: a signature refusal -> (code, HTTP status, message or None: the refusal's own), per
#: protocol family: what EC2's Query API, the JSON services (KMS, Cost Explorer) and the
#: rest-json services (EBS direct, DLM) answer
AUTH_ERRORS: dict[str, dict[str, tuple[str, int, str | None]]] = {
    "query": {
        "missing": ("MissingAuthenticationToken", 403,
                    "The request must contain either a valid (registered) AWS access key ID "
                    "or X.509 certificate."),
        "incomplete": ("IncompleteSignature", 400, None),
        "unknown_key": ("AuthFailure", 401,
                        "AWS was not able to validate the provided access credentials"),
        "signature": ("SignatureDoesNotMatch", 403, None),
        "expired": ("RequestExpired", 400, None),
    },
    "json": {
        "missing": ("MissingAuthenticationTokenException", 400, "Missing Authentication Token"),
        "incomplete": ("IncompleteSignatureException", 400, None),
        "unknown_key": ("UnrecognizedClientException", 400,
                        "The security token included in the request is invalid."),
        "signature": ("InvalidSignatureException", 400, None),
        "expired": ("InvalidSignatureException", 400, None),
    },
    "rest-json": {
        "missing": ("MissingAuthenticationTokenException", 403, "Missing Authentication Token"),
        "incomplete": ("IncompleteSignatureException", 403, None),
        "unknown_key": ("UnrecognizedClientException", 403,
                        "The security token included in the request is invalid."),
        "signature": ("InvalidSignatureException", 403, None),
        "expired": ("InvalidSignatureException", 403, None),
    },
}

#: every code :data:`AUTH_ERRORS` answers with (the error tables pass them through)
AUTH_CODES = frozenset(code for table in AUTH_ERRORS.values() for code, _, _ in table.values())


def auth_error(exc: AuthFailed, family: str) -> ApiError:
    """The ApiError a protocol family (``query``, ``json``, ``rest-json``) answers a
    refused signature with."""
    code, status, message = AUTH_ERRORS[family][exc.kind]
    return ApiError(code, message or exc.message, status=status)
