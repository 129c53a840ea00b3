"""The folder rules (INTERFACE §8) on plain values: entries, skip decisions, walk bounds."""

from __future__ import annotations

from typing import Any

import pytest

from flashback.protocol import folder
from flashback.protocol.folder import (
    MAX_DEPTH,
    MAX_DIR_PAGES,
    Action,
    BadListing,
    DirListing,
    LocalFile,
    PendingDir,
    RemoteEntry,
    SiblingNames,
    SkipDirectory,
    UnsafeEntry,
    WalkBudget,
    check_entry,
    decide_dir,
    decide_file,
    parse_mtime_ns,
    part_name,
)

T0 = "2026-01-02T03:04:05Z"
T0_NS = 1767323045 * 1_000_000_000


def file_entry(path: str, size: int = 3, mtime: Any = T0, **over: Any) -> dict[str, Any]:
    name = path.rsplit("/", 1)[-1]
    return {"name": name, "path": path, "type": "file", "size": size, "mtime": mtime, **over}


def dir_entry(path: str, mtime: Any = T0) -> dict[str, Any]:
    name = path.rsplit("/", 1)[-1]
    return {"name": name, "path": path, "type": "dir", "size": 0, "mtime": mtime, "mime": None}


def test_mtime_is_parsed_exactly_or_not_at_all() -> None:
    assert parse_mtime_ns(T0) == T0_NS
    assert parse_mtime_ns("2026-01-02T03:04:05.5Z") == T0_NS + 500_000_000
    assert parse_mtime_ns("1970-01-01T00:00:00Z") == 0
    for bad in (None, 5, "", "2026-13-01T00:00:00Z", "2026-01-02 03:04:05Z", "\x1b[31m", "9" * 99):
        assert parse_mtime_ns(bad) is None


def test_a_plain_entry_is_accepted_with_our_own_components() -> None:
    entry = check_entry(("a", "b"), file_entry("a/b/c d é.txt", 10), SiblingNames(False))
    assert entry == RemoteEntry("c d é.txt", ("a", "b", "c d é.txt"), "file", 10, T0_NS)
    assert entry.path == "a/b/c d é.txt"
    top = check_entry((), dir_entry("sub"), SiblingNames(False))
    assert (top.kind, top.parts, top.size) == ("dir", ("sub",), 0)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (file_entry("d/..", name=".."), "plain relative path"),
        (file_entry("d/.", name="."), "plain relative path"),
        (file_entry("/etc/passwd", name="passwd"), "plain relative path"),
        (file_entry("d/a\\b", name="a\\b"), "plain relative path"),
        (file_entry("d/a\x00b", name="a\x00b"), "plain relative path"),
        (file_entry("d/C:x", name="C:x"), "plain relative path"),
        (file_entry("d/x/y", name="x/y"), "slash"),
        (file_entry("../x", name="x"), "plain relative path"),
        (file_entry("elsewhere/x", name="x"), "its path is not 'd/x'"),
        (file_entry("d/x", name="y"), "its path is not 'd/y'"),
        (file_entry("d", name="d"), "its path is not 'd/d'"),  # the listing itself
        (file_entry("d//x", name="x"), "its path is not"),
        (file_entry("d/x", size=-1), "without a size"),
        (file_entry("d/x", size=True), "without a size"),
        (file_entry("d/x", type="link"), "neither"),
        (file_entry("d/\udcff", name="\udcff"), "UTF-8"),
        (file_entry("d/" + "x" * 256, name="x" * 256), "too long"),
        ("not an object", "not an object"),
        ({"name": 1, "path": "d/1", "type": "file", "size": 1}, "no name"),
    ],
)
def test_untrusted_entries_are_refused(raw: Any, reason: str) -> None:
    with pytest.raises(UnsafeEntry, match=reason):
        check_entry(("d",), raw, SiblingNames(False))


def test_hidden_entries_are_not_fetched() -> None:
    with pytest.raises(folder.HiddenEntry):
        check_entry((), file_entry(".env"), SiblingNames(False))
    with pytest.raises(folder.HiddenEntry):
        check_entry((), dir_entry(".git"), SiblingNames(False))


def test_siblings_differing_only_in_case_on_a_case_insensitive_disk() -> None:
    sensitive, insensitive = SiblingNames(False), SiblingNames(True)
    for siblings in (sensitive, insensitive):
        check_entry((), file_entry("README"), siblings)
    check_entry((), file_entry("readme"), sensitive)  # two files on Linux
    with pytest.raises(UnsafeEntry, match="differs only in case from 'README'"):
        check_entry((), file_entry("readme"), insensitive)
    with pytest.raises(UnsafeEntry, match="differs only in case"):
        check_entry((), dir_entry("ReadMe"), insensitive)  # a directory would clash too
    with pytest.raises(UnsafeEntry, match="listed twice"):
        check_entry((), file_entry("README"), sensitive)
    check_entry((), file_entry("Straße"), insensitive)
    with pytest.raises(UnsafeEntry, match="differs only in case"):
        check_entry((), file_entry("STRASSE"), insensitive)  # casefold, not lower
    check_entry((), file_entry("caf\u00e9"), insensitive)  # é precomposed
    with pytest.raises(UnsafeEntry, match="differs only in case"):
        check_entry((), file_entry("CAFE\u0301"), insensitive)  # E + combining acute
    check_entry((), file_entry("CAFE\u0301"), sensitive)


def remote(size: int = 3, mtime_ns: int | None = T0_NS) -> RemoteEntry:
    return RemoteEntry("x", ("x",), "file", size, mtime_ns)


def test_second_run_fetches_only_what_is_missing_or_changed() -> None:
    assert decide_file(None, remote()) is Action.FETCH
    assert decide_file(LocalFile("file", 3, T0_NS), remote()) is Action.SKIP
    assert decide_file(LocalFile("file", 3, T0_NS + 999), remote()) is Action.SKIP  # rounding
    assert decide_file(LocalFile("file", 4, T0_NS), remote()) is Action.FETCH
    assert decide_file(LocalFile("file", 3, T0_NS + 10**9), remote()) is Action.COMPARE
    assert decide_file(LocalFile("file", 3, T0_NS), remote(mtime_ns=None)) is Action.COMPARE
    for kind in ("dir", "symlink", "other"):
        assert decide_file(LocalFile(kind), remote()) is Action.CONFLICT
    assert decide_dir(None) is Action.FETCH
    assert decide_dir(LocalFile("dir")) is Action.SKIP
    assert decide_dir(LocalFile("symlink")) is Action.CONFLICT  # never walk into a link
    assert decide_dir(LocalFile("file", 1, 1)) is Action.CONFLICT


def page(path: str, entries: list[dict[str, Any]], cursor: str | None = None) -> dict[str, Any]:
    return {"path": path, "entries": entries, "next_cursor": cursor}


def test_pages_are_followed_and_checked() -> None:
    listing = DirListing(PendingDir(("d",)), WalkBudget(), case_insensitive=False)
    accepted, refused = listing.add_page(
        page("d", [file_entry("d/a"), file_entry("d/..", name="..")], "c1")
    )
    assert [e.name for e in accepted] == ["a"]
    assert refused == [
        ("d/..", "not a plain relative path (dot segment, hidden or drive-letter component)")
    ]
    assert not listing.done and listing.cursor == "c1"
    accepted, _ = listing.add_page(page("d", [file_entry("d/a"), file_entry("d/b")]))
    assert [e.name for e in accepted] == ["b"]  # "a" again: listed twice
    assert listing.done and listing.pages == 2  # type: ignore[unreachable]  # still narrowed by `not listing.done`


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"entries": "x", "path": "d"}, "without an entries list"),
        (page("other", []), "with another one"),
        (page("d", [], cursor=""), "malformed next_cursor"),
        (page("d", [], cursor="x" * 1025), "malformed next_cursor"),
        ([], "without an entries list"),
    ],
)
def test_malformed_pages_end_the_walk(bad: Any, message: str) -> None:
    listing = DirListing(PendingDir(("d",)), WalkBudget(), case_insensitive=False)
    with pytest.raises(BadListing, match=message):
        listing.add_page(bad)


def test_endless_listings_are_bounded() -> None:
    listing = DirListing(PendingDir(()), WalkBudget(), case_insensitive=False)
    listing.add_page(page("", [], "same"))
    with pytest.raises(BadListing, match="repeats a cursor"):
        listing.add_page(page("", [], "same"))
    listing = DirListing(PendingDir(()), WalkBudget(), case_insensitive=False)
    with pytest.raises(BadListing, match=f"over {MAX_DIR_PAGES} pages"):
        for n in range(MAX_DIR_PAGES + 1):
            listing.add_page(page("", [], f"c{n}"))
    assert listing.pages == MAX_DIR_PAGES


def test_entry_and_directory_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(folder, "MAX_DIR_ENTRIES", 3)
    listing = DirListing(PendingDir(()), WalkBudget(), case_insensitive=False)
    with pytest.raises(BadListing, match="over 3 entries"):
        listing.add_page(page("", [file_entry(f"f{n}") for n in range(4)]))
    monkeypatch.setattr(folder, "MAX_TREE_ENTRIES", 5)
    budget = WalkBudget()
    DirListing(PendingDir(()), budget, case_insensitive=False).add_page(
        page("", [file_entry("a"), file_entry("b"), file_entry("c")])
    )
    with pytest.raises(BadListing, match="tree has over 5 entries"):
        DirListing(PendingDir(("x",)), budget, case_insensitive=False).add_page(
            page("x", [file_entry("x/a"), file_entry("x/b"), file_entry("x/c")])
        )
    monkeypatch.setattr(folder, "MAX_TREE_DIRS", 1)
    budget = WalkBudget()
    top = DirListing(PendingDir(()), budget, case_insensitive=False)
    accepted, _ = top.add_page(page("", [dir_entry("a"), dir_entry("b")]))
    top.child(accepted[0])
    with pytest.raises(BadListing, match="over 1 directories"):
        top.child(accepted[1])


def test_a_listing_that_points_into_itself_is_a_link_back() -> None:
    budget = WalkBudget()
    top = DirListing(PendingDir(("d",)), budget, case_insensitive=False)
    same = [file_entry("{}/f"), dir_entry("{}/loop")]

    def entries(path: str) -> list[dict[str, Any]]:
        return [
            {**e, "path": e["path"].format(path)}
            for e in same  # the same names, sizes and times at every level
        ]

    accepted, _ = top.add_page(page("d", entries("d")))
    child = top.child(next(e for e in accepted if e.kind == "dir"))
    assert child.parts == ("d", "loop")
    with pytest.raises(SkipDirectory, match="same entries as 'd'"):
        DirListing(child, budget, case_insensitive=False).add_page(
            page("d/loop", entries("d/loop"))
        )


def test_directories_only_are_not_judged_but_depth_is_bounded() -> None:
    budget = WalkBudget()
    pending = PendingDir(("a",))
    for depth in range(1, MAX_DEPTH):  # mkdir -p a/a/a/...: the same listing at every level
        listing = DirListing(pending, budget, case_insensitive=False)
        path = "/".join(pending.parts)
        accepted, _ = listing.add_page(page(path, [dir_entry(path + "/a")]))
        pending = listing.child(accepted[0])
        assert len(pending.parts) == depth + 1
    DirListing(pending, budget, case_insensitive=False)  # MAX_DEPTH itself is fine
    with pytest.raises(SkipDirectory, match=f"deeper than {MAX_DEPTH}"):
        DirListing(PendingDir(("a",) * (MAX_DEPTH + 1)), budget, case_insensitive=False)


def test_part_names_are_hidden_and_fit_the_disk() -> None:
    assert part_name("a b.txt") == ".a b.txt.part"
    fits = "é" * 122  # 244 bytes: ".NAME.part.json" is 255
    assert part_name(fits) == f".{fits}.part"
    assert len((part_name(fits) + ".json").encode()) == 255
    long = "é" * 123
    assert part_name(long).startswith("..flashback-") and len(part_name(long) + ".json") < 80
    # the name its hash spells has a part of its own, not the long name's
    spelled = part_name(long)[2 : -len(".part")]
    assert part_name(spelled) == f".{spelled}.part" != part_name(long)
