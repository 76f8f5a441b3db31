"""Render a sweep's report as one self-contained HTML page (sortable tables, embedded images) that works offline."""
from __future__ import annotations

import base64
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape

import numpy as np
import pandas as pd

DASH = "\u2013"
MIMES = ("image/png", "image/svg+xml")
LONG = 40  # text cells longer than this are cut short on screen, the whole text in their tooltip
STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;line-height:1.4}
.wrap{overflow:auto;max-height:85vh;margin:.5rem 0 1rem}
table{border-collapse:collapse;font-size:.85rem}
th,td{padding:.3rem .5rem;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
th{position:sticky;top:0;background:#eef;cursor:pointer;user-select:none;vertical-align:bottom}
tbody tr:nth-child(even){background:#f7f7f7}
.num{text-align:right}
td.num{white-space:nowrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-variant-numeric:tabular-nums}
.long{max-width:16rem;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.fold{display:none}
.unfold:checked~.wrap .fold{display:table-cell}
label{cursor:pointer;font-size:.9rem}
img{max-width:100%}
"""
SCRIPT = """
(function () {
  function key(cell) {
    var raw = cell.getAttribute("data-sort");
    if (raw === null) return cell.textContent.toLowerCase();
    return raw === "" ? null : parseFloat(raw);
  }
  function compare(a, b, dir) {
    if (a === null || b === null) return (a === null) - (b === null);
    if (typeof a !== typeof b) return (typeof a === "number" ? -1 : 1) * dir;
    return (a < b ? -1 : a > b ? 1 : 0) * dir;
  }
  function sortBy(th) {
    var table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    table.querySelectorAll("thead th").forEach(function (h) {
      h.removeAttribute("aria-sort");
      h.querySelector(".arrow").textContent = "";
    });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    th.querySelector(".arrow").textContent = dir === 1 ? " \u25b2" : " \u25bc";
    var rows = Array.prototype.map.call(body.rows, function (row, i) {
      return {row: row, key: key(row.cells[col]), i: i};
    });
    rows.sort(function (a, b) { return compare(a.key, b.key, dir) || a.i - b.i; });
    rows.forEach(function (r) { body.appendChild(r.row); });
  }
  document.querySelectorAll("table.sortable thead th").forEach(function (th) {
    th.addEventListener("click", function () { sortBy(th); });
    th.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(th); }
    });
  });
})();
"""


@dataclass(frozen=True)
class Table:
    """A sortable table section: a heading, a plain-text note and the frame's cells (its index is not shown).
    Numbers print with `digits` significant digits unless `formats` gives their column a format spec (e.g. '.1f');
    the `folded` columns stay hidden until the reader ticks the section's toggle, named by `fold_label`."""

    title: str
    frame: pd.DataFrame
    note: str = ""
    digits: int = 4
    formats: Mapping[str, str] = field(default_factory=dict)
    folded: Sequence[str] = ()
    fold_label: str = "more columns"


@dataclass(frozen=True)
class Image:
    """An image section: PNG or SVG bytes shown through a data: URI, so the page needs no other file."""

    title: str
    data: bytes
    mime: str

    def __post_init__(self) -> None:
        if self.mime not in MIMES:
            raise ValueError(f"unsupported image type {self.mime!r}; expected one of {MIMES}")


def _text(value: object) -> str:
    return escape(str(value), quote=True)


def _paragraphs(text: str) -> str:
    """Plain text as escaped <p> elements, one per blank-line-separated paragraph."""
    return "".join(f"<p>{_text(part.strip())}</p>" for part in text.split("\n\n") if part.strip())


def _raw(number: float) -> str:
    """The exact value for data-sort: repr round-trips a float; infinities spelled as JS parseFloat reads them."""
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return repr(number)


def _class(*names: str) -> str:
    """A class attribute of the names given, none when they are all empty."""
    shown = " ".join(n for n in names if n)
    return f' class="{shown}"' if shown else ""


def _cell(value: object, numeric: bool, spec: str | None = None, digits: int = 4, fold: str = "") -> str:
    """One <td>: missing as an en dash with an empty sort key (sorted last); numbers formatted by `spec` (else
    integers with thousands separators, reals to `digits` significant digits), raw value kept; long text cut short
    on screen, the whole of it in a tooltip; class `fold` where the column is folded."""
    num = "num" if numeric else ""
    if pd.api.types.is_scalar(value) and pd.isna(value):
        return f'<td{_class(num, fold)} data-sort="">{DASH}</td>'
    if isinstance(value, (bool, np.bool_)):
        return f"<td{_class(fold)}>{'yes' if value else 'no'}</td>"
    if isinstance(value, numbers.Integral):
        return f'<td{_class("num", fold)} data-sort="{int(value)}">{int(value):{spec or ","}}</td>'
    if isinstance(value, numbers.Real):
        number = float(value)
        return f'<td{_class("num", fold)} data-sort="{_raw(number)}">{number:{spec or f".{digits}g"}}</td>'
    text = str(value)
    if len(text) > LONG:
        return f'<td{_class("long", fold)} title="{_text(text)}">{_text(text)}</td>'
    return f"<td{_class(fold)}>{_text(text)}</td>"


def _table(number: int, table: Table) -> str:
    frame = table.frame
    numeric = [pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t) for t in frame.dtypes]
    folds = ["fold" if name in table.folded else "" for name in frame.columns]
    specs = [table.formats.get(name) for name in frame.columns]
    head = "".join(
        f'<th scope="col" tabindex="0"{_class("num" if num else "", fold)}>{_text(name)}'
        '<span class="arrow" aria-hidden="true"></span></th>'
        for name, num, fold in zip(frame.columns, numeric, folds)
    )
    rows = "".join(
        "<tr>" + "".join(_cell(v, num, spec, table.digits, fold)
                         for v, num, spec, fold in zip(row, numeric, specs, folds)) + "</tr>\n"
        for row in frame.itertuples(index=False, name=None)
    )
    hidden = sum(bool(f) for f in folds)
    toggle = (f'<input type="checkbox" class="unfold" id="unfold-{number}">'
              f'<label for="unfold-{number}"> show {_text(table.fold_label)} ({hidden})</label>\n' if hidden else "")
    return (
        f"<section><h2>{_text(table.title)}</h2>{_paragraphs(table.note)}\n{toggle}"
        f'<div class="wrap"><table class="sortable" id="table-{number}">'
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}</tbody></table></div></section>"
    )


def _image(image: Image) -> str:
    uri = f"data:{image.mime};base64,{base64.b64encode(image.data).decode('ascii')}"
    return f'<section><h2>{_text(image.title)}</h2><img src="{uri}" alt="{_text(image.title)}"></section>'


def render_html(title: str, intro: str, tables: Sequence[Table], images: Sequence[Image] = ()) -> str:
    """A complete, deterministic HTML page (inline CSS and sorting script, images inline) with all data text escaped."""
    sections = [_table(n, t) for n, t in enumerate(tables, start=1)] + [_image(i) for i in images]
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_text(title)}</title><style>{STYLE}</style></head>",
        f"<body><h1>{_text(title)}</h1>{_paragraphs(intro)}",
        *sections,
        f"<script>{SCRIPT}</script></body>",
        "</html>",
        "",
    ])
