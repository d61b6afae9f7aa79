"""Errors are classed by what they mean, whichever S3 server spelled them (AWS, s3proxy, MinIO).

The answers here are the codes and statuses those servers send; the real-server behaviour of
the common ones is covered by tests/test_s3_store.py against each server.
"""

from __future__ import annotations

import asyncio

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from handlers.errors import (
    AkisnapError,
    BucketMissingError,
    EncodeError,
    EnvironmentFaultError,
    ObjectMissingError,
    PermanentError,
    StoreAccessDeniedError,
    StoreCredentialsError,
    StoreMisconfiguredError,
    StoreUnavailableError,
    StoreUnreachableError,
    TransientError,
    first_cause,
)
from handlers.stores.s3 import s3_error


def client_error(code: str, status: int) -> ClientError:
    answer = {
        "Error": {"Code": code, "Message": f"{code} said the server"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(answer, "PutObject")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        # checksum mismatch: s3proxy/AWS and MinIO spellings, both resent
        ("BadDigest", 400, StoreUnavailableError),
        ("XAmzContentChecksumMismatch", 400, StoreUnavailableError),
        ("XAmzContentSHA256Mismatch", 400, StoreUnavailableError),
        # throttling and 5xx stay transient
        ("SlowDown", 503, StoreUnavailableError),
        ("XMinioServerNotInitialized", 503, StoreUnavailableError),
        ("InternalError", 500, StoreUnavailableError),
        ("", 502, StoreUnavailableError),
        ("", 429, StoreUnavailableError),
        # a code nobody listed: retried, never taken for bad input
        ("SomethingNew", 400, StoreUnavailableError),
        # not implemented (SSE on a server without it): the operator's to fix
        ("NotImplemented", 501, StoreMisconfiguredError),
        ("", 501, StoreMisconfiguredError),
        # KMS key missing: MinIO's spelling comes with a 404, AWS's with a 400
        ("kms:KeyNotFound", 404, StoreMisconfiguredError),
        ("KMS.NotFoundException", 400, StoreMisconfiguredError),
        ("KMS.AccessDeniedException", 403, StoreAccessDeniedError),
        # access denied and refused credentials
        ("AccessDenied", 403, StoreAccessDeniedError),
        ("", 403, StoreAccessDeniedError),
        ("InvalidAccessKeyId", 403, StoreCredentialsError),
        ("SignatureDoesNotMatch", 403, StoreCredentialsError),
        ("ExpiredToken", 400, StoreCredentialsError),
        # bucket missing vs object missing
        ("NoSuchBucket", 404, BucketMissingError),
        ("NoSuchKey", 404, ObjectMissingError),
        ("404", 404, ObjectMissingError),
    ],
)
def test_client_errors_by_meaning(code: str, status: int, expected: type[AkisnapError]) -> None:
    got = s3_error(client_error(code, status), "put s3://b/k")
    assert type(got) is expected, f"{code or status} became {type(got).__name__}"


def test_the_kinds_are_what_the_daemon_decides_by() -> None:
    """Environment faults are neither permanent (dead letter) nor transient (retry)."""
    for env in (StoreUnreachableError, StoreCredentialsError, BucketMissingError):
        assert issubclass(env, EnvironmentFaultError)
        assert not issubclass(env, PermanentError | TransientError)
    assert StoreCredentialsError.kind != StoreAccessDeniedError.kind
    assert issubclass(StoreCredentialsError, StoreAccessDeniedError)


def test_connect_failures_are_unreachable_but_slow_answers_transient() -> None:
    refused = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    assert isinstance(s3_error(refused, "ping"), StoreUnreachableError)
    assert isinstance(
        s3_error(ConnectionRefusedError(111, "refused"), "ping"), StoreUnreachableError
    )
    slow = ReadTimeoutError(endpoint_url="http://127.0.0.1:1")
    assert type(s3_error(slow, "get")) is StoreUnavailableError


def test_first_cause_skips_groups_and_cancellations() -> None:
    real = EncodeError("the real one")
    group = BaseExceptionGroup(
        "outer", [BaseExceptionGroup("inner", [asyncio.CancelledError(), real]), ValueError()]
    )
    assert first_cause(group) is real
