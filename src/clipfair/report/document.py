"""The one report model: a document of sections holding text, tables and figures,
rendered to Markdown (``summary.md``, ``model_card.md``, ...) and to one self-contained
HTML page (``report.html``).

Layer: report.

Stages that have something to say (the summary, variant comparison, prompt sensitivity,
the model card, retrieval bias, ...) build :class:`Section` objects; only this module turns
them into Markdown or HTML, so a new output format is one renderer here and no stage
writes Markdown by hand.

Inline markup inside text and table cells is a small, fixed subset rendered by both
renderers alike: ``**bold**``, ``*emphasis*``, ```code``` and ``[text](url)``.

Every string is escaped by the renderer, so a user's string (a taxonomy or query name, a
label, category, attribute value, path) cannot attack the reader: :func:`inline_html` for
HTML, :func:`inline_markdown` for Markdown (the one escaping function of every ``.md``
clipfair writes). Outside the markup subset, characters a CommonMark renderer would read
as HTML, an image, a link, an entity or a code span are backslash-escaped; a link
is kept only when its URL is ``http(s):``, ``#...`` or a relative path (the same rule as
HTML), so ``<script>``, ``<img onerror=...>``, ``![](http://...)`` and ``[x](javascript:...)``
render as the text they are.

Usage::

    doc = Document("clipfair results", [
        Section("Accuracy", [Text("Cells: accuracy [95% CI] (n)."),
                             Table(["group", "accuracy"], [["White", "98.2%"]], align="lr"),
                             Figure("accuracy_race.png", "Accuracy by race")]),
    ])
    Path("summary.md").write_text(to_markdown(doc))
    Path("report.html").write_text(to_html(doc, base_dir=out_dir))
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union
from urllib.parse import quote

__all__ = ["Text", "Note", "Bullets", "Table", "Figure", "Details", "Section", "Document", "Block",
           "to_markdown", "to_html", "inline_markdown", "inline_html"]


@dataclass
class Text:
    """A paragraph."""

    text: str


@dataclass
class Note:
    """A call-out paragraph (Markdown block quote); ``kind`` is ``info``, ``warning`` or ``danger``
    (a red banner: the model does not work)."""

    text: str
    kind: str = "info"


@dataclass
class Bullets:
    items: list[str]
    ordered: bool = False


@dataclass
class Table:
    """A table. ``align``: one of ``l``/``r``/``c`` per column (default all ``l``).
    Cells are strings (inline markup allowed) or numbers; ``caption`` is a paragraph above."""

    columns: list[str]
    rows: list[list[object]]
    align: str | Sequence[str] | None = None
    caption: str = ""

    def __post_init__(self) -> None:
        self.columns = [str(c) for c in self.columns]
        self.rows = [list(r) for r in self.rows]
        for i, r in enumerate(self.rows):
            if len(r) != len(self.columns):
                raise ValueError(f"table row {i} has {len(r)} cells for {len(self.columns)} columns")
        al = list(self.align) if self.align is not None else ["l"] * len(self.columns)
        if len(al) != len(self.columns) or any(a not in "lrc" for a in al):
            raise ValueError(f"table align {self.align!r}: one of l/r/c per column ({len(self.columns)})")
        self.align = al


@dataclass
class Figure:
    """An image file (PNG or SVG), given relative to the output folder the document is written to."""

    path: str
    caption: str = ""
    alt: str = ""


@dataclass
class Details:
    """Collapsed content: a ``<details>`` element in both Markdown and HTML."""

    summary: str
    blocks: list["Block"] = field(default_factory=list)


Block = Union[Text, Note, Bullets, Table, Figure, Details, "Section"]


@dataclass
class Section:
    """A titled section; its heading level follows from nesting (never patched)."""

    title: str
    blocks: list[Block] = field(default_factory=list)
    anchor: str = ""
    #: HTML only: the section's body is folded (a <details> under its heading), open on a click
    folded: bool = False


@dataclass
class Document:
    title: str
    sections: list[Section | Block] = field(default_factory=list)
    intro: list[Block] = field(default_factory=list)


# --------------------------------------------------------------------------- escaping

_INLINE = re.compile(r"(\*\*(?P<b>.+?)\*\*)|(`(?P<c>[^`]+)`)|(\[(?P<lt>[^\]]+)\]\((?P<lu>[^)\s]+)\))"
                     r"|((?<![\w*])\*(?P<i>[^*\s][^*]*?)\*(?![\w*]))")
_SAFE_URL = re.compile(r"^(https?:|#|[\w./-]+$)")
#: what CommonMark could read as raw HTML or an autolink (``<`` before a tag or scheme), an
#: entity, the end of a link or image text (``](``, ``][``, ``]:``), a code span or an escape;
#: "p < 0.05" and "[95% CI]" stay as they are
_MD_SPECIAL = re.compile(r"(\\|`|<(?=[A-Za-z/!?])|&(?=#?\w+;)|\](?=[(\[:])|!(?=\[))")


def _md_plain(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", text)


def inline_markdown(text: object) -> str:
    """``text`` for a Markdown document: the inline subset (**bold**, *em*, `code`, [t](url)
    with a safe URL) kept, everything else escaped (see the module docstring)."""
    s = str(text)
    out, pos = [], 0
    for m in _INLINE.finditer(s):
        out.append(_md_plain(s[pos:m.start()]))
        if m.group("b") is not None:
            out.append(f"**{inline_markdown(m.group('b'))}**")
        elif m.group("c") is not None:
            out.append(f"`{m.group('c')}`")  # a code span shows its content as text in CommonMark
        elif m.group("lt") is not None:
            url = m.group("lu")
            if out[-1].endswith("!"):  # "![t](url)" would be an image
                out[-1] = out[-1][:-1] + "\\!"
            out.append(f"[{inline_markdown(m.group('lt'))}]({url})" if _SAFE_URL.match(url)
                       else _md_plain(m.group(0)))
        else:
            out.append(f"*{inline_markdown(m.group('i'))}*")
        pos = m.end()
    out.append(_md_plain(s[pos:]))
    return "".join(out)


# --------------------------------------------------------------------------- Markdown

def _md_cell(x: object) -> str:
    return inline_markdown(x).replace("|", "\\|").replace("\n", " ")


def _md_blocks(blocks: Sequence[Block], level: int, out: list[str]) -> None:
    for b in blocks:
        if isinstance(b, Section):
            out += ["#" * min(level, 6) + " " + inline_markdown(b.title).replace("\n", " "), ""]
            _md_blocks(b.blocks, level + 1, out)
        elif isinstance(b, Text):
            out += [inline_markdown(b.text), ""]
        elif isinstance(b, Note):
            prefix = {"warning": "**Warning:** ", "danger": "🛑 **"}.get(b.kind, "")
            if b.kind == "danger":
                out += [f"> {prefix}{inline_markdown(b.text)}**", ""]
                continue
            out += ["> " + line if line else ">" for line in inline_markdown(prefix + b.text).split("\n")]
            out.append("")
        elif isinstance(b, Bullets):
            for i, item in enumerate(b.items, 1):
                item = inline_markdown(item).replace("\n", " ")
                out.append(f"{i}. {item}" if b.ordered else f"- {item}")
            out.append("")
        elif isinstance(b, Table):
            if b.caption:
                out += [inline_markdown(b.caption), ""]
            sep = {"l": "---", "r": "---:", "c": ":---:"}
            out.append("| " + " | ".join(_md_cell(c) for c in b.columns) + " |")
            out.append("| " + " | ".join(sep[a] for a in b.align) + " |")
            for r in b.rows:
                out.append("| " + " | ".join(_md_cell(c) for c in r) + " |")
            out.append("")
        elif isinstance(b, Figure):
            path = b.path if _SAFE_URL.match(b.path) else b.path.replace(" ", "%20")
            path = path.replace("(", "%28").replace(")", "%29").replace("<", "%3C").replace(">", "%3E")
            alt = re.sub(r"([\\`<>&\[\]!*_])", r"\\\1", b.alt or b.caption).replace("\n", " ")
            out += [f"![{alt}]({path})", ""]
            if b.caption and b.alt and b.alt != b.caption:  # else the alt text already says it
                out += [f"*{inline_markdown(b.caption)}*", ""]
        elif isinstance(b, Details):
            out += ["<details>", f"<summary>{html.escape(b.summary)}</summary>", ""]
            _md_blocks(b.blocks, level, out)
            out += ["</details>", ""]
        else:
            raise TypeError(f"not a document block: {type(b).__name__}")


def to_markdown(doc: Document) -> str:
    out: list[str] = ["# " + inline_markdown(doc.title).replace("\n", " "), ""]
    _md_blocks(doc.intro, 2, out)
    _md_blocks(doc.sections, 2, out)
    return "\n".join(out).rstrip("\n") + "\n"


# --------------------------------------------------------------------------- HTML


def inline_html(text: object) -> str:
    """Escape ``text`` and render the inline subset (**bold**, *em*, `code`, [t](url))."""
    s = str(text)
    out, pos = [], 0
    for m in _INLINE.finditer(s):
        out.append(html.escape(s[pos:m.start()]))
        if m.group("b") is not None:
            out.append(f"<strong>{inline_html(m.group('b'))}</strong>")
        elif m.group("c") is not None:
            out.append(f"<code>{html.escape(m.group('c'))}</code>")
        elif m.group("lt") is not None:
            url = m.group("lu")
            safe = url if _SAFE_URL.match(url) else "#"
            out.append(f'<a href="{html.escape(safe)}">{inline_html(m.group("lt"))}</a>')
        else:
            out.append(f"<em>{inline_html(m.group('i'))}</em>")
        pos = m.end()
    out.append(html.escape(s[pos:]))
    return "".join(out)


def _slug(text: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, i = base, 2
    while slug in used:
        slug, i = f"{base}-{i}", i + 1
    used.add(slug)
    return slug


#: characters an SVG keeps as they are inside a data: URI in a double-quoted attribute (``"``,
#: ``&``, ``#``, ``%``, ``<``, ``>``, controls and non-ASCII are percent-encoded)
_SVG_SAFE = " !$'()*+,-./:;=?@[]^_`{|}~"


def _img_src(path: str, base_dir: Path | None) -> str:
    p = Path(path)
    if base_dir is not None and not p.is_absolute():
        p = base_dir / p
    try:
        data = p.read_bytes()
    except OSError:
        return html.escape(path)  # a missing image shows its alt text; the page still renders
    if p.suffix.lower() == ".svg":  # text: percent-encoded (a third smaller than base64)
        return "data:image/svg+xml," + quote(data.decode("utf-8"), safe=_SVG_SAFE)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _html_blocks(blocks: Sequence[Block], level: int, out: list[str], base_dir: Path | None,
                 used: set[str], toc: list[tuple[int, str, str]]) -> None:
    for b in blocks:
        if isinstance(b, Section):
            slug = b.anchor or _slug(b.title, used)
            toc.append((level, slug, b.title))
            h = min(level, 6)
            if b.folded:
                out.append(f'<section id="{html.escape(slug)}"><details class="fold"><summary><h{h}>'
                           f'{inline_html(b.title)}</h{h}></summary>')
                _html_blocks(b.blocks, level + 1, out, base_dir, used, toc)
                out.append("</details></section>")
                continue
            out.append(f'<section id="{html.escape(slug)}"><h{h}>{inline_html(b.title)}</h{h}>')
            _html_blocks(b.blocks, level + 1, out, base_dir, used, toc)
            out.append("</section>")
        elif isinstance(b, Text):
            out.append(f"<p>{inline_html(b.text)}</p>".replace("\n", "<br>"))
        elif isinstance(b, Note):
            out.append(f'<div class="note {html.escape(b.kind)}">{inline_html(b.text)}</div>'.replace("\n", "<br>"))
        elif isinstance(b, Bullets):
            tag = "ol" if b.ordered else "ul"
            out.append(f"<{tag}>" + "".join(f"<li>{inline_html(i)}</li>" for i in b.items) + f"</{tag}>")
        elif isinstance(b, Table):
            if b.caption:
                out.append(f'<p class="caption">{inline_html(b.caption)}</p>')
            cls = {"l": "", "r": ' class="num"', "c": ' class="mid"'}
            head = "".join(f"<th{cls[a]}>{inline_html(c)}</th>" for c, a in zip(b.columns, b.align))
            body = "".join("<tr>" + "".join(f"<td{cls[a]}>{inline_html(c)}</td>" for c, a in zip(r, b.align))
                           + "</tr>" for r in b.rows)
            out.append(f'<div class="tablewrap"><table class="sortable"><thead><tr>{head}</tr></thead>'
                       f"<tbody>{body}</tbody></table></div>")
        elif isinstance(b, Figure):
            alt = html.escape(b.alt or b.caption or Path(b.path).stem)
            cap = f"<figcaption>{inline_html(b.caption)}</figcaption>" if b.caption else ""
            out.append(f'<figure><img src="{_img_src(b.path, base_dir)}" alt="{alt}">{cap}</figure>')
        elif isinstance(b, Details):
            out.append(f"<details><summary>{inline_html(b.summary)}</summary>")
            _html_blocks(b.blocks, level, out, base_dir, used, toc)
            out.append("</details>")
        else:
            raise TypeError(f"not a document block: {type(b).__name__}")


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:72rem;margin:2rem auto;
padding:0 1.2rem;color:#1a202c;line-height:1.5}
h1{font-size:1.7rem;border-bottom:2px solid #e2e8f0;padding-bottom:.3rem}
h2{font-size:1.35rem;margin-top:2.2rem;border-bottom:1px solid #e2e8f0}
h3{font-size:1.1rem;margin-top:1.6rem}h4,h5,h6{font-size:1rem}
code{background:#edf2f7;padding:0 .25rem;border-radius:3px;font-size:.9em}
.note{border-left:4px solid #4c72b0;background:#f0f5ff;padding:.5rem .9rem;margin:.8rem 0}
.note.warning{border-color:#c44e52;background:#fff5f5}
nav.toc ul{columns:3;margin:.3rem 0}
details.fold>summary{cursor:pointer;list-style:revert}details.fold>summary>h2,details.fold>summary>h3{display:inline}
.note.danger{border:2px solid #b00020;background:#b00020;color:#fff;font-weight:600;font-size:1.05rem}
.tablewrap{overflow-x:auto;margin:.6rem 0 1rem}
table{border-collapse:collapse;font-size:.88rem}
th,td{border:1px solid #e2e8f0;padding:.25rem .55rem;vertical-align:top}
th{background:#f7fafc;text-align:left;cursor:pointer;user-select:none}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}td.mid,th.mid{text-align:center}
tbody tr:nth-child(even){background:#fafafa}
figure{margin:1rem 0}img{max-width:100%;height:auto}figcaption{font-size:.85rem;color:#4a5568}
.caption{font-size:.9rem;color:#2d3748;margin-bottom:.2rem}
nav.toc{font-size:.9rem;background:#f7fafc;border:1px solid #e2e8f0;padding:.4rem 1rem;margin:1rem 0}
nav.toc ul{margin:.2rem 0;padding-left:1.2rem}
details{margin:.6rem 0}summary{cursor:pointer;font-weight:600}
"""

# sortable tables: click a header; numbers (first number in the cell) sort numerically
_JS = """
document.querySelectorAll('table.sortable th').forEach(function(th){th.addEventListener('click',function(){
var t=th.closest('table'),b=t.tBodies[0],i=Array.prototype.indexOf.call(th.parentNode.children,th),
d=th.dataset.dir==='asc'?'desc':'asc';th.dataset.dir=d;
function k(r){var s=r.children[i].textContent.trim(),m=s.match(/^-?[0-9.]+/);return m?parseFloat(m[0]):s.toLowerCase();}
Array.prototype.slice.call(b.rows).sort(function(x,y){var a=k(x),c=k(y);
if(typeof a!==typeof c){a=String(a);c=String(c);}return (a<c?-1:a>c?1:0)*(d==='asc'?1:-1);})
.forEach(function(r){b.appendChild(r);});});});
"""


def to_html(doc: Document, base_dir: Path | str | None = None, toc: bool = True) -> str:
    """One self-contained page: inline CSS, images embedded as data URIs, no network, readable
    without JavaScript (a small inline script makes tables sortable). Figure paths are read
    relative to ``base_dir``."""
    base = Path(base_dir) if base_dir is not None else None
    body: list[str] = []
    entries: list[tuple[int, str, str]] = []
    used: set[str] = set()
    _html_blocks(doc.intro, 2, body, base, used, [])
    intro_len = len(body)
    _html_blocks(doc.sections, 2, body, base, used, entries)
    nav = ""
    if toc and len([e for e in entries if e[0] == 2]) > 1:
        items = "".join(f'<li><a href="#{html.escape(s)}">{inline_html(t)}</a></li>' for lv, s, t in entries if lv == 2)
        # folded, one line: the first screen is for the findings
        nav = f'<nav class="toc"><details><summary>Contents</summary><ul>{items}</ul></details></nav>'
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(doc.title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{inline_html(doc.title)}</h1>", *body[:intro_len], nav, *body[intro_len:],
             f"<script>{_JS}</script></body></html>"]
    return "\n".join(p for p in parts if p) + "\n"
