"""Markdown from a shared file to safe HTML, with its links turned into UI navigation.

Pure: text in, HTML out. The file is hostile. Raw HTML is off (markdown-it
escapes ``<script>`` and ``<img onerror>`` as text), markdown-it's own
``validateLink`` already refuses ``javascript:``/``vbscript:``/``file:``
links, and every URL that survives is rewritten here:

* ``http``/``https`` links stay (``rel="noopener noreferrer"``); any other
  scheme or a host-relative ``//host`` link loses its ``href`` (dead);
* a relative link is resolved against the file's folder with
  :func:`~flashback.protocol.paths.resolve_relative` (never above the peer's
  root, never hidden) and becomes the UI's view of that file (or, with a
  trailing ``/``, the folder listing); one that would leave the root is dead;
* a link's ``#fragment`` is kept (``deep.md#section-two`` opens that
  heading), and every heading gets an ``id`` as GitHub makes it (lower case,
  punctuation dropped, spaces to ``-``, ``-1``... for repeats); an id the page
  itself uses (:data:`PAGE_IDS`) is never given to a heading;
* GFM tables and ``~~strikethrough~~`` render (markdown-it's own rules);
* an image may only come from the same peer (through the UI's content
  proxy): a remote or ``data:`` image has its ``src`` removed, so the page
  tells no third party it was read.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from pathlib import PurePosixPath
from typing import Final
from urllib.parse import unquote, urlsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token

from flashback.protocol.paths import UnsafePath, resolve_relative

#: (action, parts) -> UI URL; action is "view", "browse" or "content"
UrlFor = Callable[[str, tuple[str, ...]], str]

_WEB_SCHEMES: Final = frozenset({"http", "https"})
_MD: Final = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
#: ids of the UI's own page elements: a heading never takes one of them
PAGE_IDS: Final = frozenset(
    {"rendered", "download", "crumbs", "text", "image", "video", "audio", "listing", "preview",
     "not-rendered", "filter", "counts", "parent", "peers", "live", "nav-access", "error",
     "icons", "main", "first-page", "next-page"}
)  # fmt: skip
_NOT_IN_SLUG: Final = re.compile(r"[^\w\- ]", re.UNICODE)
MAX_SLUG_CHARS: Final = 100


def _target(raw: str, base_dir: tuple[str, ...]) -> tuple[tuple[str, ...], bool] | None:
    """The root-relative parts a relative URL names and whether it names a folder; else None."""
    parts = urlsplit(raw)
    if parts.scheme or parts.netloc:
        return None
    # markdown-it percent-encoded the link (normalizeLink): decode exactly once.
    path = unquote(parts.path)
    try:
        return resolve_relative(base_dir, path), path.endswith("/") or path in ("", ".", "..")
    except UnsafePath:
        return None


def _rewrite_link(token: Token, base_dir: tuple[str, ...], url_for: UrlFor) -> None:
    href = str(token.attrGet("href") or "")
    scheme = urlsplit(href).scheme.lower()
    if scheme in _WEB_SCHEMES and urlsplit(href).netloc:
        token.attrSet("rel", "noopener noreferrer")
        return
    if href.startswith("#"):
        return  # a fragment of this very page
    target = _target(href, base_dir) if not scheme else None
    if target is None:
        token.attrs.pop("href", None)
        token.attrSet("class", "dead-link")
        return
    parts, is_folder = target
    url = url_for("browse" if is_folder or not parts else "view", parts)
    fragment = urlsplit(href).fragment
    token.attrSet("href", f"{url}#{fragment}" if fragment else url)


def _rewrite_image(token: Token, base_dir: tuple[str, ...], url_for: UrlFor) -> None:
    target = _target(str(token.attrGet("src") or ""), base_dir)
    if target is None or target[1]:
        token.attrs.pop("src", None)
        return
    token.attrSet("src", url_for("content", target[0]))


def _rewrite(tokens: Sequence[Token], base_dir: tuple[str, ...], url_for: UrlFor) -> None:
    for token in tokens:
        if token.type == "link_open":
            _rewrite_link(token, base_dir, url_for)
        elif token.type == "image":
            _rewrite_image(token, base_dir, url_for)
        if token.children:
            _rewrite(token.children, base_dir, url_for)


def slug(text: str) -> str:
    """GitHub's heading anchor: ``Section Two!`` -> ``section-two``."""
    return _NOT_IN_SLUG.sub("", text.strip().lower()).replace(" ", "-")[:MAX_SLUG_CHARS]


def _heading_ids(tokens: Sequence[Token]) -> None:
    seen: dict[str, int] = {}
    taken: set[str] = set(PAGE_IDS)
    for heading, inline in itertools.pairwise(tokens):
        if heading.type != "heading_open" or inline.type != "inline":
            continue
        text = "".join(
            child.content
            for child in inline.children or ()
            if child.type in ("text", "code_inline")
        )
        base = slug(text) or "section"
        anchor, count = base, seen.get(base, 0)
        while anchor in taken:
            count += 1
            anchor = f"{base}-{count}"
        seen[base] = count
        taken.add(anchor)
        heading.attrSet("id", anchor)


def render_markdown(text: str, file_parts: tuple[str, ...], url_for: UrlFor) -> str:
    """Safe HTML for the markdown *text* of the file at *file_parts* (root-relative)."""
    base_dir = tuple(PurePosixPath(*file_parts).parent.parts) if file_parts else ()
    env: dict[str, object] = {}
    tokens = _MD.parse(text, env)
    _rewrite(tokens, base_dir, url_for)
    _heading_ids(tokens)
    html: str = _MD.renderer.render(tokens, _MD.options, env)
    return html
