"""``iot-config device-token``: the CLI side of per-device credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from iot_config_core import MacAddress, open_store
from iot_config_core.device_tokens import RevocationList, load_keyring, new_secret_line
from iot_config_server.cli import EXIT_OK, EXIT_USAGE, main

MAC = "AA:BB:CC:DD:EE:01"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    store = tmp_path / "store"
    open_store(str(store), create=True)
    secrets = tmp_path / "secrets"
    secrets.write_text(new_secret_line(1) + "\n" + new_secret_line(2) + "\n")
    secrets.chmod(0o600)
    return {"IOT_CONFIG_STORE": str(store), "IOT_CONFIG_DEVICE_SECRET_FILE": str(secrets)}


def run(capsys: pytest.CaptureFixture[str], env: dict[str, str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    status = main(["device-token", *argv], environ=env)
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def test_prints_the_token_the_server_verifies(
    capsys: pytest.CaptureFixture[str], env: dict[str, str]
) -> None:
    status, out = run(capsys, env, MAC)
    assert status == EXIT_OK
    keyring = load_keyring(env["IOT_CONFIG_DEVICE_SECRET_FILE"])
    assert keyring.verify(MacAddress.parse(MAC), out.strip()) == 2
    status, out = run(capsys, env, "aabbccddee01", "--key-version", "1")
    assert status == EXIT_OK
    assert out.strip() == keyring.token(MAC, 1)


def test_revoke_list_unrevoke(capsys: pytest.CaptureFixture[str], env: dict[str, str]) -> None:
    assert run(capsys, env, MAC, "--revoke") == (
        EXIT_OK,
        "aa-bb-cc-dd-ee-01: tokens up to key version v2 revoked\n",
    )
    revocations = RevocationList(open_store(env["IOT_CONFIG_STORE"]).backend)
    assert revocations.is_revoked(MacAddress.parse(MAC), 2)
    status, out = run(capsys, env, "--list-revoked")
    assert status == EXIT_OK
    assert out.startswith("aa-bb-cc-dd-ee-01  through v2  ")
    assert run(capsys, env, MAC, "--unrevoke") == (
        EXIT_OK,
        "aa-bb-cc-dd-ee-01: revocation removed\n",
    )
    assert run(capsys, env, MAC, "--unrevoke") == (EXIT_OK, "aa-bb-cc-dd-ee-01: was not revoked\n")
    assert run(capsys, env, "--list-revoked") == (EXIT_OK, "")


def test_new_secret_continues_the_versions_and_starts_an_empty_file(
    capsys: pytest.CaptureFixture[str], env: dict[str, str], tmp_path: Path
) -> None:
    status, out = run(capsys, env, "--new-secret")
    assert status == EXIT_OK
    assert out.startswith("v3:")
    empty = tmp_path / "new-secrets"
    empty.touch()  # what `--new-secret > FILE` finds
    status, out = run(capsys, {**env, "IOT_CONFIG_DEVICE_SECRET_FILE": str(empty)}, "--new-secret")
    assert (status, out[:3]) == (EXIT_OK, "v1:")


@pytest.mark.parametrize(
    ("argv", "extra_env", "message"),
    [
        ((MAC,), {"IOT_CONFIG_DEVICE_SECRET_FILE": ""}, "no device secret"),
        ((MAC,), {"IOT_CONFIG_DEVICE_SECRET_FILE": "/nonexistent/secrets"}, "cannot read"),
        (("not-a-mac",), {}, "invalid MAC"),
        ((), {}, "needs a MAC"),
        ((MAC, "--revoke", "--unrevoke"), {}, "not allowed with"),
    ],
)
def test_usage_errors(
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    argv: tuple[str, ...],
    extra_env: dict[str, str],
    message: str,
) -> None:
    merged = {key: value for key, value in {**env, **extra_env}.items() if value}
    status, out = run(capsys, merged, *argv)
    assert status == EXIT_USAGE
    assert message in out
