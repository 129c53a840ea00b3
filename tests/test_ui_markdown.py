"""Markdown rendering is a pure function: hostile files in, safe HTML out."""

from __future__ import annotations

import pytest

from flashback.ui.markdown import render_markdown


def url_for(action: str, parts: tuple[str, ...]) -> str:
    return f"/ui/{action}/" + "/".join(parts)


def render(text: str, at: tuple[str, ...] = ("docs", "index.md")) -> str:
    return render_markdown(text, at, url_for)


def test_markdown_renders() -> None:
    html = render("# Title\n\nsome *emphasis*\n\n- one\n- two\n")
    assert '<h1 id="title">Title</h1>' in html
    assert "<em>emphasis</em>" in html
    assert "<li>one</li>" in html


@pytest.mark.parametrize(
    "hostile",
    [
        "<script>document.title='pwned'</script>",
        '<img src="x" onerror="window.pwned=1">',
        "<iframe src='http://evil'></iframe>",
        'text <span onclick="x()">inline html</span>',
    ],
)
def test_raw_html_is_escaped_text(hostile: str) -> None:
    html = render(hostile)
    assert "<script" not in html and "<img" not in html and "<iframe" not in html
    assert "<span" not in html
    assert "&lt;" in html


@pytest.mark.parametrize(
    "link",
    [
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "vbscript:x",
        "data:text/html,<script>x</script>",
        "file:///etc/passwd",
        "mailto:a@b",
        "//evil.example/x",
        "../../outside.md",
        ".secret",
    ],
)
def test_dangerous_or_outside_links_are_dead(link: str) -> None:
    html = render(f"[click]({link})")
    assert "href" not in html
    assert "click" in html


def test_relative_links_navigate_in_the_ui() -> None:
    html = render("[b](b.md) [up](../top.md) [abs](/root.md) [dir](sub/) [home](..)")
    assert 'href="/ui/view/docs/b.md"' in html
    assert 'href="/ui/view/top.md"' in html
    assert 'href="/ui/view/root.md"' in html
    assert 'href="/ui/browse/docs/sub"' in html
    assert 'href="/ui/browse/"' in html


def test_percent_encoded_link_is_decoded_once() -> None:
    html = render("[x](my%20notes.md) [y](%252e%252e/x.md)")
    assert 'href="/ui/view/docs/my notes.md"' in html
    # decoded once, "%2e%2e" is a plain (odd) name, not "..": it stays inside
    assert 'href="/ui/view/docs/%2e%2e/x.md"' in html


def test_web_links_stay_with_noopener() -> None:
    html = render("[site](https://example.org/a?b=1)")
    assert 'href="https://example.org/a?b=1"' in html
    assert 'rel="noopener noreferrer"' in html


def test_fragment_links_stay() -> None:
    assert 'href="#part"' in render("[p](#part)")


def test_images_only_from_the_same_peer() -> None:
    html = render(
        "![pic](img/p.png) ![far](https://tracker.example/p.png) ![d](data:image/png;base64,AA==)"
    )
    assert 'src="/ui/content/docs/img/p.png"' in html
    assert "tracker.example" not in html
    assert "data:" not in html
    assert html.count("<img") == 3


def test_file_at_root() -> None:
    assert 'href="/ui/view/b.md"' in render_markdown("[b](b.md)", ("index.md",), url_for)


def test_gfm_tables_render_as_tables() -> None:
    html = render("| name | size |\n|---|--:|\n| a.txt | 3 |\n\n~~old~~\n")
    assert "<table>" in html and "<th>name</th>" in html
    assert '<td style="text-align:right">3</td>' in html
    assert "|" not in html
    assert "<s>old</s>" in html


def test_headings_get_github_ids_and_links_keep_their_fragment() -> None:
    html = render(
        "# Section Two!\n\n## Section two\n\n## `code` & more\n\n# Download\n\n"
        "[there](deep.md#section-two) [here](#section-two-1)\n"
    )
    assert '<h1 id="section-two">' in html
    assert '<h2 id="section-two-1">' in html  # a repeat
    assert '<h2 id="code--more">' in html
    assert '<h1 id="download-1">' in html  # the page's own id is not a heading's
    assert 'href="/ui/view/docs/deep.md#section-two"' in html
    assert 'href="#section-two-1"' in html


def test_a_hostile_heading_makes_a_plain_id() -> None:
    html = render('# "><script>x</script>\n')
    assert "<script>" not in html
    assert 'id="scriptxscript"' in html
