"""The error table: every code has one rule, and HTTP, OpenAPI and the CLI all read it."""

from __future__ import annotations

import pytest

from iot_config_core import (
    ErrorCode,
    InvalidETagError,
    InvalidMacError,
    MacAddress,
    NotFoundError,
    StoreUnavailableError,
    UnsupportedStoreError,
)
from iot_config_server.http_errors import (
    ERROR_TABLE,
    ApiError,
    ApiErrorCode,
    ExitStatus,
    exit_status_for,
    user_message,
)


def test_every_code_has_exactly_one_rule() -> None:
    assert set(ERROR_TABLE) == set(ErrorCode) | set(ApiErrorCode)
    assert not set(map(str, ErrorCode)) & set(map(str, ApiErrorCode))


def test_headers_follow_the_meaning_of_the_answer() -> None:
    for code, rule in ERROR_TABLE.items():
        names = {name for name, _ in rule.headers}
        assert ("WWW-Authenticate" in names) == (rule.status == 401), code
        if "Retry-After" in names:  # only where a retry can help
            assert rule.status == 503, code
            assert rule.exit_status is ExitStatus.UNAVAILABLE, code


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (StoreUnavailableError("down"), ExitStatus.UNAVAILABLE),
        (InvalidMacError("bad"), ExitStatus.USAGE),
        (InvalidETagError("bad"), ExitStatus.USAGE),
        (UnsupportedStoreError("no"), ExitStatus.USAGE),
        (NotFoundError("gone"), ExitStatus.FAILED),
    ],
)
def test_cli_exit_status_comes_from_the_table(
    error: StoreUnavailableError, status: ExitStatus
) -> None:
    assert exit_status_for(error) is status
    assert ERROR_TABLE[error.code].exit_status is status


def test_messages_read_as_the_old_service_wrote_them() -> None:
    with pytest.raises(InvalidMacError) as bad:
        MacAddress.parse("xyz")
    assert (
        user_message(bad.value, "get config")
        == "Cannot get config because MAC address 'xyz' has invalid format"
    )
    missing = NotFoundError("no config", mac_address="aa-bb-cc-dd-ee-ff")
    assert user_message(missing, "delete config") == "Config aa-bb-cc-dd-ee-ff was not found"
    busy = ApiError(ApiErrorCode.STORE_BUSY, "the store is not answering")
    assert user_message(busy, "") == "The store is not answering"
    assert user_message(busy, "list configs") == (
        "Cannot list configs because the store is not answering"
    )


def test_a_core_error_the_table_does_not_know_is_answered_as_its_base_class() -> None:
    class ReadOnlyStoreError(StoreUnavailableError):
        code = "READ_ONLY"  # type: ignore[assignment]  # a code added before the table learns it

    assert "READ_ONLY" not in ERROR_TABLE
    assert exit_status_for(ReadOnlyStoreError("ro")) is ExitStatus.UNAVAILABLE
