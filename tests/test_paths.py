"""Path safety: the request path is already decoded and must never escape the root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flashback.protocol.paths import (
    UnsafePath,
    is_servable_name,
    open_under_root,
    real_root,
    resolve_relative,
    resolve_under_root,
    safe_resolve,
    split_request_path,
    verify_opened,
)


@pytest.mark.parametrize(
    "raw",
    [
        "../etc/passwd",
        "a/../../etc",
        "..",
        ".",
        "a/./b",
        "/etc/passwd",
        "//etc/passwd",
        "C:/Windows",
        "c:",
        "a\\..\\b",
        "..\\..\\etc",
        "a\x00b",
        "file.txt\x00.png",
        ".git/config",
        "a/.hidden",
        ".env",
    ],
)
def test_split_refuses(raw: str) -> None:
    with pytest.raises(UnsafePath):
        split_request_path(raw)


def test_split_keeps_percent_literal() -> None:
    # "%2e%2e" reaching us means the client sent %252e%252e: it is a literal name.
    assert split_request_path("%2e%2e/x") == ("%2e%2e", "x")


def test_split_drops_empty_components() -> None:
    assert split_request_path("a//b/") == ("a", "b")
    assert split_request_path("") == ()


def test_show_hidden_allows_dot_names_but_not_dot_segments() -> None:
    assert split_request_path(".config/x", show_hidden=True) == (".config", "x")
    with pytest.raises(UnsafePath):
        split_request_path("../x", show_hidden=True)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    evil = tmp_path / "root_evil"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.txt").write_text("a")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "h.txt").write_text("h")
    evil.mkdir()
    (evil / "secret.txt").write_text("secret")
    (root / "inside-link").symlink_to(root / "docs" / "a.txt")
    (root / "outside-link").symlink_to(evil / "secret.txt")
    (root / "dir-out").symlink_to(evil)
    (root / "to-hidden").symlink_to(root / ".hidden" / "h.txt")
    (root / "dangling").symlink_to(root / "nope")
    return real_root(root), evil


def test_resolve_inside(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    assert resolve_under_root(root, ("docs", "a.txt")) == root / "docs" / "a.txt"
    assert resolve_under_root(root, ()) == root


def test_symlink_inside_root_is_served(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    assert resolve_under_root(root, ("inside-link",)) == root / "docs" / "a.txt"


@pytest.mark.parametrize(
    "parts",
    [
        ("outside-link",),
        ("dir-out", "secret.txt"),
        ("dir-out",),
        ("to-hidden",),  # a visible link to a hidden file is still hidden
        ("dangling",),
        ("missing.txt",),
        ("docs", "a.txt", "x"),  # a file is not a directory
    ],
)
def test_resolve_refuses(tree: tuple[Path, Path], parts: tuple[str, ...]) -> None:
    root, _ = tree
    with pytest.raises(UnsafePath):
        resolve_under_root(root, parts)


def test_sibling_prefix_is_outside(tree: tuple[Path, Path]) -> None:
    """``root_evil`` starts with ``root`` as a string but is not inside it."""
    root, evil = tree
    assert str(evil).startswith(str(root))
    with pytest.raises(UnsafePath):
        resolve_under_root(root, ("dir-out", "secret.txt"))


def test_hidden_allowed_with_show_hidden(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    assert resolve_under_root(root, ("to-hidden",), show_hidden=True).name == "h.txt"


def test_root_itself_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "f").write_text("f")
    link = tmp_path / "link"
    link.symlink_to(real)
    rel, path = safe_resolve(real_root(link), "f")
    assert rel == "f"
    assert path == real / "f"


def test_root_traversal_via_symlinked_parent(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.symlink("..", root / "up")
    with pytest.raises(UnsafePath):
        resolve_under_root(real_root(root), ("up", "root", "..", "x"))
    with pytest.raises(UnsafePath):
        resolve_under_root(real_root(root), ("up",))


@pytest.mark.parametrize(
    ("name", "servable"),
    [
        ("a.txt", True),
        ("ab:c", True),
        ("a:b", False),
        (".env", False),
        ("..", False),
        ("back\\slash", False),
        ("c:evil.txt", False),
        ("", False),
    ],
)
def test_servable_names(name: str, servable: bool) -> None:
    assert is_servable_name(name) is servable
    if servable:
        assert split_request_path(f"dir/{name}") == ("dir", name)
    elif name:
        with pytest.raises(UnsafePath):
            split_request_path(f"dir/{name}")


def test_verify_opened_catches_a_descriptor_outside_the_root(tree: tuple[Path, Path]) -> None:
    """What a swapped symlink would have made us open is refused from the fd itself."""
    root, evil = tree
    fd = os.open(evil / "secret.txt", os.O_RDONLY)
    try:
        with pytest.raises(UnsafePath):
            verify_opened(root, fd)
    finally:
        os.close(fd)
    hidden = os.open(root / ".hidden" / "h.txt", os.O_RDONLY)
    try:
        with pytest.raises(UnsafePath):
            verify_opened(root, hidden)
        verify_opened(root, hidden, show_hidden=True)
    finally:
        os.close(hidden)


def test_open_under_root(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    relative, fd, info = open_under_root(root, "inside-link")
    os.close(fd)
    assert relative == "inside-link" and info.st_size == 1
    for raw in ("docs", "outside-link", "missing", "docs/../docs/a.txt"):
        with pytest.raises(UnsafePath):
            open_under_root(root, raw)
    relative, fd, _ = open_under_root(root, "docs", directory=True)
    os.close(fd)
    assert relative == "docs"


@pytest.mark.parametrize(
    ("base", "target", "expected"),
    [
        ((), "b.md", ("b.md",)),
        (("docs",), "b.md", ("docs", "b.md")),
        (("docs", "deep"), "../b.md", ("docs", "b.md")),
        (("docs",), "./x/./y.txt", ("docs", "x", "y.txt")),
        (("docs",), "/top.md", ("top.md",)),
        (("docs",), "sub/", ("docs", "sub")),
        (("docs",), "..", ()),
    ],
)
def test_resolve_relative_link(
    base: tuple[str, ...], target: str, expected: tuple[str, ...]
) -> None:
    assert resolve_relative(base, target) == expected


@pytest.mark.parametrize(
    ("base", "target"),
    [
        ((), "../x"),
        (("docs",), "../../etc/passwd"),
        (("docs",), "/../x"),
        ((), ".secret"),
        ((), "a/.git/config"),
        ((), "a\\b"),
        ((), "a\x00b"),
        ((), "C:x"),
    ],
)
def test_resolve_relative_link_refuses(base: tuple[str, ...], target: str) -> None:
    with pytest.raises(UnsafePath):
        resolve_relative(base, target)
