"""The peer server against curl: resume, ranges, and traversal attempts sent verbatim."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest
import trio

pytestmark = pytest.mark.skipif(
    not any((Path(d) / "curl").exists() for d in ("/usr/bin", "/usr/local/bin", "/bin")),
    reason="curl is not installed (make test installs it)",
)


async def curl(*args: str) -> tuple[int, bytes]:
    result = await trio.run_process(
        ["curl", "-sS", "--max-time", "30", *args], capture_stdout=True, check=False
    )
    return result.returncode, result.stdout


async def status_and_body(url: str, *extra: str) -> tuple[int, bytes]:
    code, out = await curl("-w", "\n%{http_code}", *extra, url)
    assert code == 0
    body, _, status = out.rpartition(b"\n")
    return int(status), body


@pytest.mark.parametrize(
    "path",
    [
        "/content/../../../../etc/passwd",
        "/content/docs/../../share_evil/passwd",
        "/content/%2e%2e/%2e%2e/etc/passwd",
        "/content/%2e%2e%2fshare_evil%2fpasswd",
        "/content/%252e%252e/share_evil/passwd",
        "/content/..%5c..%5cshare_evil%5cpasswd",
        "/content/..\\..\\share_evil\\passwd",
        "/content/%00",
        "/content/hello.txt%00.png",
        "/content//etc/passwd",
        "/content/%2fetc%2fpasswd",
        "/content/C:%5cWindows",
        "/content/.secret",
        "/content/%2esecret",
        "/content/.hiddendir/inner.txt",
        "/content/escape",
        "/content/escape-dir/passwd",
        "/download/..%2f..%2f..%2fetc%2fpasswd",
        "/api/files/..",
        "/api/files/%2e%2e",
        "/api/files/escape-dir",
    ],
)
async def test_traversal_attempts_are_404(peer_url: str, path: str) -> None:
    status, body = await status_and_body(peer_url + path, "--path-as-is")
    assert status == 404, body
    error = json.loads(body)["error"]
    assert error["code"] == "not_found"
    assert b"root:x" not in body and b"top secret" not in body


async def test_ranges_with_dash_r(peer_url: str, share: Path) -> None:
    data = (share / "big.bin").read_bytes()
    status, body = await status_and_body(peer_url + "/download/big.bin", "-r", "1000-1999")
    assert status == 206
    assert body == data[1000:2000]
    status, body = await status_and_body(peer_url + "/download/big.bin", "-r", "-100")
    assert status == 206
    assert body == data[-100:]


async def test_resume_with_continue_at(peer_url: str, share: Path, tmp_path: Path) -> None:
    data = (share / "big.bin").read_bytes()
    out = tmp_path / "partial.bin"
    out.write_bytes(data[:1_234_567])
    code, _ = await curl("-C", "-", "-o", str(out), peer_url + "/download/big.bin")
    assert code == 0
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()


async def test_huge_request_body_rejected(peer_url: str, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"x" * (2 * 1024 * 1024))
    status, body = await status_and_body(
        peer_url + "/api/info", "-X", "POST", "--data-binary", f"@{blob}"
    )
    assert 400 <= status < 500
    assert "error" in json.loads(body)


async def test_a_garbage_range_is_ignored(peer_url: str) -> None:
    status, body = await status_and_body(peer_url + "/content/hello.txt", "-H", "Range: bytes=\x01")
    assert status == 200 and body  # RFC 9110 §14.2: an unparsable Range is ignored


async def test_malformed_request_line_gets_400(peer_url: str) -> None:
    url = httpx.URL(peer_url)
    async with await trio.open_tcp_stream(url.host, url.port or 80) as stream:
        await stream.send_all(b"GARBAGE\r\n\r\n")
        answer = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 400")
