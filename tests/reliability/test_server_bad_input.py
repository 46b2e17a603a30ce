"""Hostile and malformed requests over real HTTP against the running server.

Each case goes over a real socket (``http.client``, or raw bytes where ``http.client`` refuses to
send the request at all). For every write attempt the whole directory around the store is compared
byte for byte before and after: bad input may cost a 4xx, never a stored byte or a stray file.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import JSON_HEADERS, Answer, ServerProcess, put_body

from .conftest import Figure
from .support import QUIET, snapshot

pytestmark = pytest.mark.cases("bad-input HTTP cases passed")

MAC = "02-00-00-00-00-01"
SANE_ID = re.compile(r"[A-Za-z0-9._:+/=@-]{1,128}")
LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def area(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The parent of the store: traversal attempts must not touch it either."""
    return tmp_path_factory.mktemp("bad-input")


@pytest.fixture(scope="module")
def server(area: Path) -> Iterator[ServerProcess]:
    store = area / "configs"
    store.mkdir()
    (area / "secret.json").write_text('{"secret": true}\n')
    proc = ServerProcess(
        "--store", str(store), log_path=area.parent / "bad-input-server.log", env=QUIET
    )
    status, _, _ = proc.request(
        "PUT", f"/api/configs/{MAC}", put_body({"deviceName": "one"}), JSON_HEADERS
    )
    assert status in (200, 201)
    yield proc
    proc.stop()


def assert_error_shape(answer: Answer) -> dict[str, object]:
    status, headers, body = answer
    assert 400 <= status < 500, (status, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), headers
    error = json.loads(body)
    assert set(error) >= {"error", "code", "details", "correlationId"}, error
    assert isinstance(error["details"], dict)
    assert error["correlationId"] == headers.get("x-request-id")
    assert headers.get("x-content-type-options") == "nosniff"
    return dict(error)


def raw_exchange(port: int, request: bytes, *, timeout: float = 10.0) -> bytes:
    """Send ``request`` verbatim and read until the server closes or ``timeout`` passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # The server may answer and close early; then read what it said.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        return _read_all(sock, timeout)


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
        if _complete(data):
            break
    return data


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return match is not None and len(body) >= int(match.group(1))


def raw_status(data: bytes) -> int:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    assert match is not None, data[:200]
    return int(match.group(1))


def raw_json(data: bytes) -> dict[str, object]:
    body = data.partition(b"\r\n\r\n")[2]
    value = json.loads(body)
    assert set(value) >= {"error", "code", "details", "correlationId"}
    return dict(value)


BAD_BODIES: dict[str, bytes] = {
    "invalid_utf8": b'{"content": {"deviceName": "caf\xe9"}}',
    "overlong_utf8": b'{"content": {"deviceName": "\xc0\xaf"}}',
    "lone_surrogate": b'{"content": {"deviceName": "\\ud800"}}',
    "nan": b'{"content": {"x": NaN}}',
    "infinity": b'{"content": {"x": Infinity}}',
    "minus_infinity": b'{"content": {"x": -Infinity}}',
    "huge_exponent": b'{"content": {"x": 1e400}}',
    "huge_integer": b'{"content": {"x": ' + b"9" * 5000 + b"}}",
    "duplicate_key": b'{"content": {"a": 1, "a": 2}}',
    "duplicate_envelope": b'{"content": {"a": 1}, "content": {"a": 2}}',
    "deep_10000": b'{"content": {"x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}}",
    "deep_objects": b'{"content": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}",
    "bom": b'\xef\xbb\xbf{"content": {}}',
    "not_object": b"[1, 2, 3]",
    "content_array": b'{"content": [1]}',
    "content_string": b'{"content": "x"}',
    "allow_overwrite_string": b'{"content": {}, "allow_overwrite": "yes"}',
    "truncated": b'{"content": {"a": ',
    "empty": b"",
    "nul_bytes": b'{"content": {"a": "\x00"}}',
    "trailing_garbage": b'{"content": {}} x',
    "too_large": b'{"content": {"pad": "' + b"x" * (LIMIT + 70_000) + b'"}}',
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_body_is_refused_without_touching_the_store(
    case: str, server: ServerProcess, area: Path
) -> None:
    before = snapshot(area)
    if case == "too_large":
        # The server answers 413 from the Content-Length and may close before reading the body,
        # so the client must tolerate a broken pipe and still read the answer.
        data = raw_exchange(
            server.port,
            f"PUT /api/configs/{MAC} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(BAD_BODIES[case])}\r\n\r\n".encode()
            + BAD_BODIES[case],
        )
        assert raw_status(data) == 413, data[:300]
        assert raw_json(data)["code"] == "PAYLOAD_TOO_LARGE"
    else:
        answer = server.request("PUT", f"/api/configs/{MAC}", BAD_BODIES[case], JSON_HEADERS)
        assert_error_shape(answer)
    assert snapshot(area) == before, f"{case}: store changed"


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1", ""],
)
def test_wrong_media_type(content_type: str, server: ServerProcess, area: Path) -> None:
    before = snapshot(area)
    headers = {"Content-Type": content_type} if content_type else {}
    answer = server.request("PUT", f"/api/configs/{MAC}", put_body({"a": 1}), headers)
    assert answer[0] == 415
    assert_error_shape(answer)
    assert snapshot(area) == before


def test_huge_declared_length_with_short_body(server: ServerProcess, area: Path) -> None:
    """100 MB announced, 20 bytes sent: refused from the header, at once, nothing buffered."""
    before = snapshot(area)
    started = time.monotonic()
    data = raw_exchange(
        server.port,
        f"PUT /api/configs/{MAC} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {100 * 1024 * 1024}\r\n\r\n".encode()
        + b'{"content": {"a": 1}',
        timeout=6,
    )
    elapsed = time.monotonic() - started
    assert raw_status(data) == 413, data[:300]
    assert raw_json(data)["code"] == "PAYLOAD_TOO_LARGE"
    assert elapsed < 5, f"took {elapsed:.1f} s: the server waited for the announced body"
    assert snapshot(area) == before


def test_short_body_for_its_declared_length(server: ServerProcess, area: Path) -> None:
    """Content-Length 1000, 20 bytes, then the client half-closes: a 400, not a hang or a 500."""
    before = snapshot(area)
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(
            f"PUT /api/configs/{MAC} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n".encode()
            + b'{"content": {"a": 1}'
        )
        sock.shutdown(socket.SHUT_WR)
        data = _read_all(sock, 15)
    # A server may also just drop a request whose body never arrived; it must not store it.
    if data:
        assert raw_status(data) < 500, data[:300]
    assert snapshot(area) == before


def test_chunked_body_over_the_limit(server: ServerProcess, area: Path) -> None:
    before = snapshot(area)
    chunk = b"x" * 65536
    body = b'{"content": {"pad": "'
    request = (
        f"PUT /api/configs/{MAC} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
    )
    request += f"{len(body):x}\r\n".encode() + body + b"\r\n"
    for _ in range(40):  # well over the body cap of the default document limit
        request += f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    request += b'3\r\n"}}\r\n0\r\n\r\n'
    data = raw_exchange(server.port, request, timeout=20)
    assert raw_status(data) == 413, data[:300]
    assert raw_json(data)["code"] == "PAYLOAD_TOO_LARGE"
    assert snapshot(area) == before


def test_malformed_chunking(server: ServerProcess, area: Path) -> None:
    before = snapshot(area)
    data = raw_exchange(
        server.port,
        f"PUT /api/configs/{MAC} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".encode(),
    )
    assert 400 <= raw_status(data) < 500, data[:300]
    assert snapshot(area) == before


HOSTILE_MACS = [
    "..",
    "...",
    "..%2F..%2Fsecret",
    "%2E%2E%2Fsecret",
    "..%2Fsecret.json",
    "aa-bb-cc-dd-ee-ff%2F..%2F..%2Fsecret",
    "%2Fetc%2Fpasswd",
    "aa-bb-cc-dd-ee-ff%00",
    "%00",
    "aa-bb-cc-dd-ee-ff%00.txt",
    "x" * 10_240,
    "%20" * 3000 + "a" * 13,
    "%D9%A0%D9%A1-00-00-00-00-01",  # Arabic-Indic digits
    "%EF%BC%90%EF%BC%92-00-00-00-00-01",  # full-width digits
    "02-00-00-00-00-01%0D%0AX-Injected:%201",
    "02:00:00:00:00:01:02",
    "0x0200000000001",
    "-1",
    "%25",
    ".locks",
    ".health-x.tmp",
]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("mac", HOSTILE_MACS, ids=lambda m: m[:40])
def test_hostile_mac_segments(method: str, mac: str, server: ServerProcess, area: Path) -> None:
    before = snapshot(area)
    body = put_body({"deviceName": "evil"}) if method == "PUT" else None
    for path in (f"/api/configs/{mac}", f"/esp32/config/{mac}.json", f"/api/configs/{mac}.json"):
        answer = server.request(method, path, body, JSON_HEADERS if body else {})
        status = answer[0]
        assert status < 500, (path[:80], answer[2][:300])
        if status != 200:  # e.g. a GET of the one real MAC spelled differently
            assert_error_shape(answer)
        assert b'"secret"' not in answer[2]
        assert b"X-Injected" not in b"".join(k.encode() for k in answer[1])
    assert snapshot(area) == before


def test_spelling_variants_address_one_file(server: ServerProcess, area: Path) -> None:
    """Accepted spellings all name the canonical file; none creates a second one."""
    for spelling in ("02:00:00:00:00:01", "02-00-00-00-00-01", "020000000001", "0200.0000.0001"):
        assert server.request("GET", f"/api/configs/{spelling}")[0] == 200
    assert sorted(p.name for p in (area / "configs").iterdir() if not p.name.startswith(".")) == [
        f"{MAC}.json"
    ]


@pytest.mark.parametrize(
    "value",
    [
        b"abc\rInjected: 1",
        b"abc\nX-Injected: 1",
        b"abc\r\n X-Injected: folded",
        b"x" * 10_240,
        b"\xff\xfe",
        b"<script>alert(1)</script>",
        b"id with spaces",
        b"%0d%0aX-Injected: 1",
    ],
    ids=["cr", "lf", "obs-fold", "10KB", "latin1", "html", "spaces", "encoded-crlf"],
)
def test_request_id_injection(value: bytes, server: ServerProcess) -> None:
    data = raw_exchange(
        server.port,
        b"GET /api/configs/" + MAC.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"X-Request-ID: " + value + b"\r\n\r\n",
    )
    status = raw_status(data)
    assert status < 500, data[:300]
    head = data.partition(b"\r\n\r\n")[0].decode("latin-1")
    assert "x-injected" not in head.lower()
    echoed = re.search(r"(?im)^x-request-id: (.*)$", head)
    if echoed is not None:  # the WSGI server may refuse the request itself (then no id at all)
        assert SANE_ID.fullmatch(echoed.group(1).strip()), echoed.group(1)[:200]
    assert "X-Injected" not in server.log()
    assert "<script>" not in server.log()


def test_if_match_lists_and_weak_tags(server: ServerProcess, area: Path, figure: Figure) -> None:
    status, headers, _ = server.request("GET", f"/api/configs/{MAC}")
    assert status == 200
    etag = headers["etag"].strip('"')
    body = put_body({"deviceName": "cas"})
    refused = {
        "weak": f'W/"{etag}"',
        "other": '"0123"',
        "weak_list": f'"0123", W/"{etag}"',
        "unterminated": f'"{etag}',
        "garbage": "<<>>",
        "empty_member": f'"{etag}",,',
        "star_in_list": f'*, "{etag}"',
        "long_list": ", ".join(f'"{i:032x}"' for i in range(400)),
    }
    for name, value in refused.items():
        before = snapshot(area)
        answer = server.request(
            "PUT", f"/api/configs/{MAC}", body, {**JSON_HEADERS, "If-Match": value}
        )
        assert answer[0] in (400, 412), (name, answer[0], answer[2][:200])
        assert_error_shape(answer)
        assert snapshot(area) == before, name
    # A NUL in a header may be refused by the HTTP server before the app sees it (no JSON body).
    before = snapshot(area)
    answer = server.request(
        "PUT", f"/api/configs/{MAC}", body, {**JSON_HEADERS, "If-Match": f'"{etag}\x00"'}
    )
    assert answer[0] == 400
    assert snapshot(area) == before
    # A list holding the current strong tag matches; the write lands exactly once.
    answer = server.request(
        "PUT", f"/api/configs/{MAC}", body, {**JSON_HEADERS, "If-Match": f'"0123", "{etag}"'}
    )
    assert answer[0] == 200, answer[2][:300]
    new_etag = answer[1]["etag"]
    stale = server.request(
        "PUT", f"/api/configs/{MAC}", body, {**JSON_HEADERS, "If-Match": f'"{etag}"'}
    )
    assert stale[0] == 412
    # Device revalidation: weak comparison, lists, and * all answer 304.
    for inm in (new_etag, f"W/{new_etag}", f'"zzz", {new_etag}', "*"):
        answer = server.request("GET", f"/esp32/config/{MAC}.json", None, {"If-None-Match": inm})
        assert answer[0] == 304, (inm, answer)
        assert answer[2] == b""
    figure("If-Match values refused without a write", len(refused))
