"""How a listing is shown to people: the pure rules, with plain values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from flashback.ui.present import (
    exact_size,
    has_thumbnail,
    human_ago,
    human_date,
    human_size,
    icon_for,
    matches,
    short_fingerprint,
    sort_spec,
    sorted_entries,
)

NOW = datetime(2026, 12, 8, 15, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (30770, "30.0 KiB"),
        (524288000, "500 MiB"),
        (1572864, "1.5 MiB"),
        (5 * 1024**4, "5.0 TiB"),
        (3 * 1024**6, "3072 PiB"),
    ],
)
def test_human_size(size: int, shown: str) -> None:
    assert human_size(size) == shown


def test_exact_size_keeps_every_byte() -> None:
    assert exact_size(524288000) == "524,288,000 bytes"


@pytest.mark.parametrize(
    ("stamp", "shown"),
    [
        ("2026-12-08T09:05:00Z", "09:05"),
        ("2026-12-01T22:28:51Z", "1 Dec 22:28"),
        ("2025-03-04T01:02:03Z", "4 Mar 2025"),
        ("2026-12-08T09:05:00+02:00", "07:05"),
        ("not a date <b>", "not a date <b>"),
    ],
)
def test_human_date(stamp: str, shown: str) -> None:
    assert human_date(stamp, NOW) == shown


@pytest.mark.parametrize(
    ("stamp", "shown"),
    [
        ("2026-12-08T15:00:00Z", "just now"),
        ("2026-12-08T14:59:48Z", "12 s ago"),
        ("2026-12-08T14:57:00Z", "3 min ago"),
        ("2026-12-08T13:00:00Z", "2 h ago"),
        ("2026-11-30T13:00:00Z", "30 Nov 13:00"),
        ("", "-"),
    ],
)
def test_human_ago(stamp: str, shown: str) -> None:
    assert human_ago(stamp, NOW) == shown


@pytest.mark.parametrize(
    ("name", "folder", "icon"),
    [
        ("docs", True, "folder"),
        ("clip.webm", False, "video"),
        ("tone.ogg", False, "audio"),
        ("pic.PNG", False, "image"),
        ("index.md", False, "doc"),
        ("notes.txt", False, "text"),
        ("main.py", False, "code"),
        ("backup.tar.gz", False, "archive"),
        ("blob", False, "file"),
    ],
)
def test_icon_for(name: str, folder: bool, icon: str) -> None:
    assert icon_for(name, folder=folder) == icon


def test_thumbnails_only_for_raster_images_the_proxy_serves_inline() -> None:
    assert has_thumbnail("a.png") and has_thumbnail("b.JPG") and has_thumbnail("c.webp")
    assert not has_thumbnail("d.svg")  # SVG can carry script: never inline
    assert not has_thumbnail("e.txt")


ENTRIES = [
    {"name": "b", "size": 10, "mtime": "2026-01-02T00:00:00Z"},
    {"name": "a", "size": 30, "mtime": "2026-01-01T00:00:00Z"},
    {"name": "c", "size": 10, "mtime": "2026-01-03T00:00:00Z"},
]


@pytest.mark.parametrize(
    ("sort", "order", "names"),
    [
        (None, None, ["a", "b", "c"]),
        ("name", "desc", ["c", "b", "a"]),
        ("size", "asc", ["b", "c", "a"]),  # ties by name
        ("size", "desc", ["a", "c", "b"]),
        ("mtime", "asc", ["a", "b", "c"]),
        ("mtime", "desc", ["c", "b", "a"]),
        ("<script>", "sideways", ["a", "b", "c"]),
    ],
)
def test_sorting(sort: str | None, order: str | None, names: list[str]) -> None:
    key, descending = sort_spec(sort, order)
    assert [e["name"] for e in sorted_entries(ENTRIES, key, descending)] == names


def test_filter_is_a_case_insensitive_part_of_the_name() -> None:
    assert matches("Holiday-Photo.JPG", "photo")
    assert matches("anything", "")
    assert not matches("notes.txt", "pic")


def test_short_fingerprint() -> None:
    fingerprint = "sha256:" + "0123456789abcdef" * 4
    assert short_fingerprint(fingerprint) == "sha256:0123456789abcdef…"
    assert short_fingerprint(None) == "-"
