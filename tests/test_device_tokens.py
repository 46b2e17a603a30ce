"""Per-device tokens and the revocation list (`iot_config_core.device_tokens`)."""

from __future__ import annotations

import hmac
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from s3_server import ACCESS_KEY, SECRET_KEY, S3Server, moto_server, storage_options

from iot_config_core import ConfigStore, MacAddress, StoreUnavailableError, open_store
from iot_config_core.device_tokens import (
    MIN_SECRET_BYTES,
    REVOCATIONS_NAME,
    DeviceKeyring,
    DeviceSecretError,
    InvalidDeviceTokenError,
    RevocationList,
    load_keyring,
    new_secret_line,
    parse_keyring,
)

MAC_A = MacAddress.parse("aa:bb:cc:dd:ee:01")
MAC_B = MacAddress.parse("aa:bb:cc:dd:ee:02")
SECRET_1 = b"1" * MIN_SECRET_BYTES
SECRET_2 = b"2" * MIN_SECRET_BYTES

macs = st.integers(min_value=0, max_value=(1 << 48) - 1).map(MacAddress)
secrets = st.binary(min_size=MIN_SECRET_BYTES, max_size=96)
versions = st.integers(min_value=1, max_value=1000)


@settings(max_examples=200, deadline=None)
@given(mac=macs, other=macs, secret=secrets, other_secret=secrets, version=versions)
def test_a_token_verifies_only_for_its_own_mac_and_secret(
    mac: MacAddress, other: MacAddress, secret: bytes, other_secret: bytes, version: int
) -> None:
    keyring = DeviceKeyring({version: secret})
    token = keyring.token(mac)
    assert token.startswith(f"v{version}.")
    assert keyring.verify(mac, token) == version
    assert DeviceKeyring({version: secret}).verify(mac, token) == version  # every replica agrees
    if other != mac:
        with pytest.raises(InvalidDeviceTokenError) as caught:
            keyring.verify(other, token)
        assert caught.value.details["reason"] == "mismatch"
    if other_secret != secret:
        with pytest.raises(InvalidDeviceTokenError):
            DeviceKeyring({version: other_secret}).verify(mac, token)


#: Every message a refusal can carry: fixed texts, so none can echo what was presented.
REFUSALS = {
    "malformed device token",
    "unknown device key version",
    "device token is not valid for this MAC",
}


@settings(max_examples=200, deadline=None)
@given(
    mac=macs,
    secret=secrets,
    garbage=st.text(max_size=80) | st.from_regex(r"v[1-3]\.[A-Za-z0-9_-]{43}", fullmatch=True),
)
def test_arbitrary_text_is_refused_with_a_typed_error(
    mac: MacAddress, secret: bytes, garbage: str
) -> None:
    keyring = DeviceKeyring({1: secret})
    if garbage != keyring.token(mac):
        with pytest.raises(InvalidDeviceTokenError) as caught:
            keyring.verify(mac, garbage)
        assert caught.value.message in REFUSALS
        assert caught.value.code == "INVALID_DEVICE_TOKEN"


def test_tokens_are_compared_with_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    keyring = DeviceKeyring({1: SECRET_1})
    token = keyring.token(MAC_A)
    assert keyring.verify(MAC_A, token) == 1
    assert keyring.verify(MAC_A, token) == 1  # the cached expected token too
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(InvalidDeviceTokenError):
        keyring.verify(MAC_A, forged)
    with pytest.raises(InvalidDeviceTokenError):
        keyring.verify(MAC_B, token)
    assert len(calls) == 4
    assert all(presented in (token.encode(), forged.encode()) for _, presented in calls)


def test_rotation_newest_signs_and_every_version_verifies() -> None:
    old = DeviceKeyring({1: SECRET_1})
    rotated = DeviceKeyring({1: SECRET_1, 2: SECRET_2})
    old_token = old.token(MAC_A)
    assert rotated.newest == 2
    assert rotated.token(MAC_A).startswith("v2.")
    assert rotated.token(MAC_A, 1) == old_token
    assert rotated.verify(MAC_A, old_token) == 1
    assert rotated.verify(MAC_A, rotated.token(MAC_A)) == 2
    retired = DeviceKeyring({2: SECRET_2})
    with pytest.raises(InvalidDeviceTokenError) as caught:
        retired.verify(MAC_A, old_token)
    assert caught.value.details["reason"] == "unknown_version"
    with pytest.raises(DeviceSecretError):
        retired.token(MAC_A, 1)


def test_a_secret_of_one_version_does_not_sign_for_another() -> None:
    # Same secret under two version numbers: the version is part of the signed message.
    keyring = DeviceKeyring({1: SECRET_1, 2: SECRET_1})
    v1 = keyring.token(MAC_A, 1)
    with pytest.raises(InvalidDeviceTokenError):
        keyring.verify(MAC_A, "v2." + v1.split(".", 1)[1])


def test_secrets_never_appear_in_repr() -> None:
    keyring = parse_keyring(f"v3:{'s' * 40}\n")
    assert "s" * 8 not in repr(keyring)
    assert repr(keyring) == "DeviceKeyring(versions=[3])"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no secret versions"),
        ("# only a comment\n", "no secret versions"),
        (f"{'x' * 40}\n", "line 1"),
        (f"v0:{'x' * 40}\n", "line 1"),
        (f"v1:{'x' * 40}\nv1:{'y' * 40}\n", "appears twice"),
        ("v1:short\n", "at least"),
    ],
)
def test_malformed_secret_text_is_refused_without_echoing_it(text: str, problem: str) -> None:
    with pytest.raises(DeviceSecretError) as caught:
        parse_keyring(text, source="secrets.txt")
    assert problem in caught.value.message
    assert "secrets.txt" in caught.value.message
    for secret in ("x" * 40, "y" * 40, "short"):
        assert secret not in caught.value.message


def test_secret_file_comments_blank_lines_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "device-secrets"
    path.write_text(f"# rotated 2026-11\n\n{new_secret_line(1)}\n  {new_secret_line(2)}  \n")
    path.chmod(0o600)
    keyring = load_keyring(str(path))
    assert list(keyring.secrets) == [1, 2]
    assert keyring.newest == 2


def test_an_unreadable_secret_file_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(DeviceSecretError) as caught:
        load_keyring(str(tmp_path / "missing"))
    assert caught.value.code == "INVALID_DEVICE_SECRET"


def test_a_world_readable_secret_file_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "device-secrets"
    path.write_text(new_secret_line(1) + "\n")
    path.chmod(0o644)
    load_keyring(str(path))
    assert "chmod 600" in caplog.text
    assert path.read_text().strip().split(":", 1)[1] not in caplog.text


def test_new_secret_lines_are_random_and_long_enough() -> None:
    first, second = new_secret_line(4), new_secret_line(4)
    assert first != second
    assert first.startswith("v4:")
    assert parse_keyring(first).newest == 4


# -- revocation ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with moto_server() as server:
        boto3.client(
            "s3",
            endpoint_url=server.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        ).create_bucket(Bucket="revocations")
        yield server


#: Two clients of one store root, as two replicas would have.
Replicas = tuple[ConfigStore, ConfigStore]


@pytest.fixture(params=["disk", "memory", "s3"])
def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> Replicas:
    if request.param == "disk":
        return open_store(str(tmp_path), create=True), open_store(str(tmp_path))
    if request.param == "memory":  # one process: memory stores are private, so share one
        store = open_store("memory://revocations", create=True)
        return store, store
    server: S3Server = request.getfixturevalue("s3")
    url = f"s3://revocations/{uuid.uuid4().hex}"
    first = open_store(url, create=True, **storage_options(server))
    return first, open_store(url, skip_instance_cache=True, **storage_options(server))


def test_revocation_round_trip_is_seen_by_another_replica(replicas: Replicas) -> None:
    store, other = replicas
    store.put(MAC_A, {"ssid": "x"})
    mine = RevocationList(store.backend, refresh_seconds=0)
    theirs = RevocationList(other.backend, refresh_seconds=0)  # another replica, same root
    assert not theirs.is_revoked(MAC_A, 1)
    entry = mine.revoke(MAC_A, 2)
    assert entry.through_version == 2
    assert theirs.is_revoked(MAC_A, 1)
    assert theirs.is_revoked(MAC_A, 2)
    assert not theirs.is_revoked(MAC_A, 3)  # a token of a later secret re-admits the device
    assert not theirs.is_revoked(MAC_B, 1)
    assert [e.mac_address for e in theirs.entries()] == [MAC_A]
    # The list is hidden: never a config, never a skipped file in a listing.
    listing = store.listing()
    assert [s.mac_address for s in listing.summaries] == [MAC_A]
    assert listing.skipped == ()
    assert theirs.unrevoke(MAC_A)
    assert not theirs.unrevoke(MAC_A)
    assert not mine.is_revoked(MAC_A, 1)


def test_revocations_are_cached_between_refreshes(tmp_path: Path) -> None:
    store = open_store(str(tmp_path), create=True)
    now = [0.0]
    cached = RevocationList(store.backend, refresh_seconds=5.0, clock=lambda: now[0])
    assert not cached.is_revoked(MAC_A, 1)
    RevocationList(store.backend).revoke(MAC_A, 1)
    assert not cached.is_revoked(MAC_A, 1)  # within the interval: not re-checked
    now[0] = 5.0
    assert cached.is_revoked(MAC_A, 1)


def test_concurrent_revocations_are_all_kept(replicas: Replicas) -> None:
    macs_to_revoke = [MacAddress(0xAABBCC000000 + i) for i in range(12)]

    def revoke(mac: MacAddress) -> None:
        store = replicas[mac.value % 2]
        RevocationList(store.backend).revoke(mac, 1)  # each thread its own replica's view

    threads = [threading.Thread(target=revoke, args=(mac,)) for mac in macs_to_revoke]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    entries = RevocationList(replicas[0].backend).entries()
    assert [e.mac_address for e in entries] == macs_to_revoke


def test_a_corrupt_revocation_list_is_an_outage_not_an_empty_list(tmp_path: Path) -> None:
    store = open_store(str(tmp_path), create=True)
    (tmp_path / REVOCATIONS_NAME).write_text('{"revoked": [')
    revocations = RevocationList(store.backend, refresh_seconds=0)
    with pytest.raises(StoreUnavailableError):
        revocations.is_revoked(MAC_A, 1)
    with pytest.raises(StoreUnavailableError):
        revocations.revoke(MAC_A, 1)
    assert (tmp_path / REVOCATIONS_NAME).read_text() == '{"revoked": ['  # nothing overwritten


def test_an_unavailable_store_is_a_typed_error(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "gone"))
    with pytest.raises(StoreUnavailableError):
        RevocationList(store.backend).revoke(MAC_A, 1)
    assert not os.path.exists(tmp_path / "gone")
