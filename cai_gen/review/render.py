"""Model answers as the review page shows them: Markdown rendered on the server, then sanitised.

Model text is hostile (a prompt can make a model write `<script>`, `<img src=http://tracker/...>` or a
`javascript:` link). markdown-it-py renders CommonMark with its `html` option off, so raw HTML in an answer is
escaped to text, never passed through; images are not rendered (an `![alt](url)` shows as text with its URL, so
no request leaves the page), and a link is rendered as its text followed by its URL as plain text: nothing on
the page navigates away silently. nh3 (the Rust ammonia sanitiser) then keeps only the formatting tags listed
in TAGS, as a second wall should a renderer rule ever emit something else. The page inserts only this output
as HTML, and the CSP (transport.HEADERS: default-src 'self') would block a script or remote image anyway.
"""
from __future__ import annotations

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml

TAGS = {"p", "br", "hr", "em", "strong", "del", "code", "pre", "blockquote", "ul", "ol", "li",
        "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td", "span"}
ATTRIBUTES = {"span": {"class"}, "ol": {"start"}}


def _md() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False}).enable("table").enable("strikethrough")
    md.disable("image")  # "![alt](url)": the "!" stays text and the rest renders as a link, i.e. as text + URL

    def link_open(self, tokens, idx, options, env):
        return ""

    def link_close(self, tokens, idx, options, env):
        # the matching link_open's href: shown, never followed
        depth, k = 0, idx - 1
        while k >= 0:
            t = tokens[k]
            if t.type == "link_close":
                depth += 1
            elif t.type == "link_open":
                if depth == 0:
                    break
                depth -= 1
            k -= 1
        href = tokens[k].attrGet("href") if k >= 0 else ""
        return f' <span class="url">&lt;{escapeHtml(str(href or ""))}&gt;</span>'

    md.add_render_rule("link_open", link_open)
    md.add_render_rule("link_close", link_close)
    return md


MD = _md()


def html(text: str) -> str:
    """Safe HTML for one answer (empty for a missing one)."""
    if not isinstance(text, str):
        return ""
    return nh3.clean(MD.render(text), tags=TAGS, attributes=ATTRIBUTES, link_rel=None, strip_comments=True)
