"""Validators, preconditions (RFC 9110 §13) and header helpers."""

from __future__ import annotations

import pytest

from flashback.protocol.conditional import (
    Precondition,
    content_disposition,
    content_type_for,
    etag_matches,
    evaluate_preconditions,
    http_date,
    if_range_allows,
    make_etag,
    parse_http_date,
    rfc3339_seconds,
    sandbox_policy,
)

ETAG = make_etag(1, 2, 3, 4)
MTIME = 1_700_000_000
DATE = http_date(MTIME)


def test_etag_is_strong_and_quoted() -> None:
    assert ETAG.startswith('"') and ETAG.endswith('"')
    assert make_etag(1, 2, 4, 4) != ETAG
    assert make_etag(1, 2, 3, 5) != ETAG  # only the ctime moved (touch -r)


def test_http_date_round_trip() -> None:
    assert DATE == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert parse_http_date(DATE) == MTIME
    assert parse_http_date("not a date") is None
    assert parse_http_date("") is None


def test_rfc3339() -> None:
    assert rfc3339_seconds(MTIME) == "2023-11-14T22:13:20Z"


@pytest.mark.parametrize(
    ("header", "weak", "expected"),
    [
        (ETAG, True, True),
        (ETAG, False, True),
        ("W/" + ETAG, True, True),
        ("W/" + ETAG, False, False),
        ('"other", ' + ETAG, True, True),
        ('"a,b", "c"', True, False),
        ("*", False, True),
        ('"unterminated', True, False),
    ],
)
def test_etag_matches(header: str, weak: bool, expected: bool) -> None:
    assert etag_matches(header, ETAG, weak=weak) is expected


def _evaluate(method: str = "GET", **headers: str) -> Precondition:
    return evaluate_preconditions(method, etag=ETAG, last_modified_s=MTIME, **headers)


def test_preconditions() -> None:
    assert _evaluate() is Precondition.PROCEED
    assert _evaluate(if_none_match=ETAG) is Precondition.NOT_MODIFIED
    assert _evaluate("HEAD", if_none_match="W/" + ETAG) is Precondition.NOT_MODIFIED
    assert _evaluate(if_none_match='"nope"') is Precondition.PROCEED
    assert _evaluate(if_modified_since=DATE) is Precondition.NOT_MODIFIED
    assert _evaluate(if_modified_since=http_date(MTIME - 1)) is Precondition.PROCEED
    assert _evaluate(if_modified_since="garbage") is Precondition.PROCEED
    # If-None-Match wins over If-Modified-Since (RFC 9110 §13.1.3)
    assert _evaluate(if_none_match='"nope"', if_modified_since=DATE) is Precondition.PROCEED
    assert _evaluate(if_match='"nope"') is Precondition.FAILED
    assert _evaluate(if_match=ETAG) is Precondition.PROCEED
    assert _evaluate(if_unmodified_since=http_date(MTIME - 10)) is Precondition.FAILED
    assert _evaluate(if_unmodified_since=DATE) is Precondition.PROCEED


def test_if_range_uses_strong_comparison() -> None:
    assert if_range_allows(None, etag=ETAG, last_modified_s=MTIME)
    assert if_range_allows(ETAG, etag=ETAG, last_modified_s=MTIME)
    assert not if_range_allows("W/" + ETAG, etag=ETAG, last_modified_s=MTIME)
    assert not if_range_allows('"old"', etag=ETAG, last_modified_s=MTIME)
    assert if_range_allows(DATE, etag=ETAG, last_modified_s=MTIME)
    assert not if_range_allows(http_date(MTIME - 1), etag=ETAG, last_modified_s=MTIME)
    assert not if_range_allows("garbage", etag=ETAG, last_modified_s=MTIME)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.txt", "text/plain; charset=utf-8"),
        ("README.md", "text/markdown; charset=utf-8"),
        ("v.mp4", "video/mp4"),
        ("x.tar.gz", "application/gzip"),
        ("noext", "application/octet-stream"),
    ],
)
def test_content_type(name: str, expected: str) -> None:
    assert content_type_for(name) == expected


def test_content_disposition() -> None:
    assert content_disposition("attachment", "a.txt") == 'attachment; filename="a.txt"'
    assert content_disposition("attachment", "résumé.pdf") == (
        "attachment; filename=\"r_sum_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"
    )
    header = content_disposition("attachment", 'a"b\\c.txt')
    assert header.startswith('attachment; filename="a_b_c.txt"')
    assert "filename*=UTF-8''a%22b%5Cc.txt" in header


@pytest.mark.parametrize(
    ("content_type", "policy"),
    [
        ("video/webm", None),
        ("audio/mpeg", None),
        ("image/png", None),
        ("IMAGE/JPEG", None),
        ("image/svg+xml", "sandbox"),
        ("text/html; charset=utf-8", "sandbox"),
        ("application/xhtml+xml", "sandbox"),
        ("application/pdf", "sandbox"),
        ("application/octet-stream", "sandbox"),
        ("", "sandbox"),
    ],
)
def test_sandbox_policy_spares_only_media_that_cannot_run_script(
    content_type: str, policy: str | None
) -> None:
    assert sandbox_policy(content_type) == policy
