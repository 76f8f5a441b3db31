"""Tests for harness.report.html.render_html: well-formed, self-contained, escaped, sortable and deterministic pages."""
from __future__ import annotations

import base64
import math
import shutil
import subprocess
from html import escape
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from harness.report.html import Image, Table, render_html

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
HOSTILE = ["<script>alert(1)</script>", 'a"b&c', "<img src=x onerror=alert(1)>", "</td></tr></table><b>x"]
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect width="4" height="4"/></svg>'
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


class Page(HTMLParser):
    """Checks that every non-void element closes in order and collects tables, images, start tags and text."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.starts: list[tuple[str, dict]] = []
        self.tables: list[dict] = []
        self.texts: list[str] = []
        self.cell: dict | None = None
        self.doctype = ""
        self.feed(text)
        self.close()
        assert self.stack == [], f"unclosed elements: {self.stack}"

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.starts.append((tag, attrs))
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "table":
            self.tables.append({"id": attrs.get("id"), "class": attrs.get("class"), "headers": [], "rows": []})
        elif tag == "tr" and "tbody" in self.stack:
            self.tables[-1]["rows"].append([])
        elif tag in ("th", "td"):
            self.cell = {"tag": tag, "attrs": attrs, "text": ""}

    def handle_startendtag(self, tag, attrs):
        raise AssertionError(f"self-closing <{tag}/> in HTML output")

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()
        if tag in ("th", "td"):
            table = self.tables[-1]
            (table["headers"] if tag == "th" else table["rows"][-1]).append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell["text"] += data
        if not {"script", "style"} & set(self.stack):
            self.texts.append(data)

    def count(self, tag: str) -> int:
        return sum(t == tag for t, _ in self.starts)


@pytest.fixture
def board() -> pd.DataFrame:
    return pd.DataFrame({
        "method": ["clip", "DRRho", None, "base"],
        "samples_seen": [5120, 1234567, 20480, 7],
        "average": [0.1 + 0.2, 0.42514, np.nan, 3.29e-5],
        "c_paper": [329.0, math.inf, 1.0e12, -2.5],
        "done": [True, False, True, True],
    })


def page_of(board: pd.DataFrame, images: list[Image] | tuple = ()) -> str:
    return render_html("Demo sweep", "Intro text.", [Table("Runs", board, note="Every run.")], images)


def test_page_is_well_formed_and_self_contained(board):
    text = page_of(board, images=[Image("plot", PNG, "image/png")])
    page = Page(text)
    assert page.doctype.lower() == "doctype html"
    assert ("meta", {"charset": "utf-8"}) in page.starts
    assert page.count("title") == 1 and page.count("style") == 1 and page.count("script") == 1
    assert page.count("link") == 0 and "http" not in text
    assert all(attrs["src"].startswith("data:") for tag, attrs in page.starts if "src" in attrs)
    assert "Demo sweep" in page.texts and "Every run." in page.texts


def test_headers_cells_and_sort_keys(board):
    (table,) = Page(page_of(board)).tables
    assert table["class"] == "sortable"
    assert [h["text"] for h in table["headers"]] == ["method", "samples_seen", "average", "c_paper", "done"]
    assert [h["attrs"].get("class") for h in table["headers"]] == [None, "num", "num", "num", None]
    texts = [[c["text"] for c in row] for row in table["rows"]]
    assert texts == [
        ["clip", "5,120", "0.3", "329", "yes"],
        ["DRRho", "1,234,567", "0.4251", "inf", "no"],
        ["\u2013", "20,480", "\u2013", "1e+12", "yes"],
        ["base", "7", "3.29e-05", "-2.5", "yes"],
    ]
    keys = [[c["attrs"].get("data-sort") for c in row] for row in table["rows"]]
    assert [row[0] for row in keys] == [None, None, "", None]  # strings sort by text; missing is marked empty
    assert [row[4] for row in keys] == [None] * 4
    assert [int(row[1]) for row in keys] == [5120, 1234567, 20480, 7]
    assert float(keys[0][2]) == 0.1 + 0.2 and float(keys[1][2]) == 0.42514 and float(keys[3][2]) == 3.29e-5
    assert keys[2][2] == "" and keys[1][3] == "Infinity" and float(keys[2][3]) == 1.0e12
    assert all(c["attrs"].get("class") == "num" for row in table["rows"] for c in row[1:4])


def test_digits_sets_float_precision(board):
    (table,) = Page(render_html("t", "", [Table("Runs", board, digits=2)])).tables
    assert [row[2]["text"] for row in table["rows"]] == ["0.3", "0.43", "\u2013", "3.3e-05"]
    assert float(table["rows"][1][2]["attrs"]["data-sort"]) == 0.42514


@pytest.mark.parametrize("hostile", HOSTILE)
def test_data_cannot_inject_markup(hostile):
    frame = pd.DataFrame({hostile: [hostile, "ok"], "score": [1.5, 2.5]})
    text = render_html(hostile, hostile, [Table(hostile, frame, note=hostile)], [Image(hostile, SVG, "image/svg+xml")])
    page = Page(text)
    assert hostile not in text and escape(hostile, quote=True) in text
    assert page.count("script") == 1 and page.count("img") == 1 and page.count("table") == 1 and page.count("b") == 0
    assert page.texts.count(hostile) == 8  # title, h1, intro, table heading, note, header, cell, image heading
    (table,) = page.tables
    assert table["headers"][0]["text"] == hostile and table["rows"][0][0]["text"] == hostile
    assert [attrs["alt"] for tag, attrs in page.starts if tag == "img"] == [hostile]


def test_two_tables_have_distinct_ids(board):
    text = render_html("t", "", [Table("A", board), Table("B", board.iloc[:2])])
    tables = Page(text).tables
    assert len(tables) == 2 and tables[0]["id"] != tables[1]["id"]
    assert all(t["class"] == "sortable" for t in tables)
    assert [len(t["rows"]) for t in tables] == [4, 2]


@pytest.mark.parametrize(("data", "mime"), [(PNG, "image/png"), (SVG, "image/svg+xml")])
def test_images_round_trip_as_data_uris(data, mime):
    text = render_html("t", "", [], [Image("scaling law", data, mime)])
    (src,) = [attrs["src"] for tag, attrs in Page(text).starts if tag == "img"]
    prefix = f"data:{mime};base64,"
    assert src.startswith(prefix) and base64.b64decode(src[len(prefix):], validate=True) == data
    assert "<svg" not in text and "<rect" not in text


def test_unknown_image_type_is_rejected():
    with pytest.raises(ValueError, match="image/gif"):
        Image("x", b"GIF89a", "image/gif")


def test_empty_frame_renders_an_empty_table():
    (table,) = Page(render_html("t", "", [Table("Nothing", pd.DataFrame())])).tables
    assert table["headers"] == [] and table["rows"] == []


def test_output_is_deterministic(board):
    images = [Image("plot", PNG, "image/png")]
    assert page_of(board, images=images) == page_of(board.copy(), images=list(images))


def test_script_sorts_every_table_numerically_with_indicators(board):
    text = render_html("t", "", [Table("A", board), Table("B", board)])
    script = text[text.index("<script>"):text.index("</script>")]
    for piece in ('querySelectorAll("table.sortable thead th")', 'getAttribute("data-sort")', "parseFloat",
                  "toLowerCase", 'addEventListener("click"', "\u25b2", "\u25bc", "aria-sort"):
        assert piece in script
    assert script.count("{") == script.count("}") and script.count("(") == script.count(")")


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_script_parses_as_javascript(tmp_path):
    text = render_html("t", "", [])
    path = tmp_path / "sort.js"
    path.write_text(text[text.index("<script>") + len("<script>"):text.index("</script>")], encoding="utf-8")
    subprocess.run(["node", "--check", str(path)], check=True, capture_output=True, timeout=60)


def test_formats_folded_columns_and_long_text():
    frame = pd.DataFrame({"method": ["clip", "x" * 60], "samples seen": [5120, 20480], "digits (%)": [41.25, 7.0],
                          "gain (pts)": [1.25, -0.5], "run id": ["a", "b"]})
    text = render_html("t", "", [Table("Runs", frame, formats={"digits (%)": ".1f", "gain (pts)": "+.1f"},
                                       folded=["digits (%)", "run id"], fold_label="per-task scores")])
    page = Page(text)
    (table,) = page.tables
    assert [[c["text"] for c in row] for row in table["rows"]] == [
        ["clip", "5,120", "41.2", "+1.2", "a"], ["x" * 60, "20,480", "7.0", "-0.5", "b"]]
    assert float(table["rows"][0][2]["attrs"]["data-sort"]) == 41.25  # the raw value still sorts
    classes = [h["attrs"].get("class") for h in table["headers"]]
    assert classes == [None, "num", "num fold", "num", "fold"]
    assert [c["attrs"].get("class") for c in table["rows"][0]] == [None, "num", "num fold", "num", "fold"]
    long = table["rows"][1][0]["attrs"]
    assert long["class"] == "long" and long["title"] == "x" * 60  # cut short on screen, whole in the tooltip
    (toggle,) = [attrs for tag, attrs in page.starts if tag == "input"]
    assert toggle["type"] == "checkbox" and toggle["class"] == "unfold"
    assert [attrs["for"] for tag, attrs in page.starts if tag == "label"] == [toggle["id"]]
    assert " show per-task scores (2)" in page.texts
    assert ".unfold:checked~.wrap .fold{display:table-cell}" in text and ".fold{display:none}" in text
    assert "<input" not in render_html("t", "", [Table("Runs", frame)])  # nothing folded: no toggle


def _results() -> pd.DataFrame:
    """A small sweep: a reference, clip and drrho at two budgets and two seeds, one failed run."""
    ref = "reference-clip-tiny-m-n30720-s0-0123456789"
    rows = [{"run_id": ref, "stage": "reference", "method": "clip", "model": "tiny-m", "samples_seen": 30720, "seed": 0,
             "is_reference": True, "reference": None, "average": 0.42}]
    for samples in (1000, 2000, 4000):
        for seed in (0, 1):
            for method, lift in (("clip", 0.0), ("drrho", 0.03)):
                rows.append({"run_id": f"sweep-{method}-tiny-s-n{samples}-s{seed}-abcdefabcd", "stage": "sweep",
                             "method": method, "model": "tiny-s", "samples_seen": samples, "seed": seed,
                             "is_reference": False, "reference": ref if method == "drrho" else None,
                             "average": 0.1 + 0.05 * np.log2(samples / 1000) + lift + 0.01 * seed})
    table = pd.DataFrame(rows).assign(status="done", error=None, gflops_per_pair=0.5, wall_time_s=10.0)
    table = table.assign(c_paper=table["gflops_per_pair"] * table["samples_seen"],
                         c_total=2 * table["gflops_per_pair"] * table["samples_seen"],
                         **{"task:digits": table["average"] - 0.05, "task:shapes": table["average"] + 0.05})
    failed = {**rows[-1], "run_id": "sweep-drrho-tiny-s-failed", "seed": 2, "average": np.nan}
    failed = pd.DataFrame([failed]).assign(status="failed", error="RuntimeError: out of memory", gflops_per_pair=0.5,
                                           wall_time_s=1.0, c_paper=2000.0, c_total=4000.0)
    return pd.concat([table, failed], ignore_index=True)


def test_report_page_reads_like_the_markdown_headline_tables_first():
    from harness.report.leaderboard import html_page, scaling_analysis
    from harness.report.scaling import FitOptions

    results = _results()
    analysis, _ = scaling_analysis(results, FitOptions(n_boot=0))
    page = Page(html_page(results, "Demo", analysis, []))
    headings = [t for t in page.texts if t in ("Mean over seeds", "Comparisons with clip", "Reference models", "Runs")]
    assert headings == ["Mean over seeds", "Comparisons with clip", "Reference models", "Runs"]
    means, compared, _, runs = page.tables[:4]
    headers = [h["text"] for h in runs["headers"]]
    assert headers == ["stage", "method", "model", "samples seen", "seed", "GFLOPs/pair", "C_paper (GFLOPs)",
                       "C_total (GFLOPs)", "digits (%)", "shapes (%)", "average (%)", "wall time (s)", "status",
                       "reference", "run id"]
    assert not {"c_paper", "task:digits", "average"} & set(headers)
    folded = [h["text"] for h in runs["headers"] if "fold" in (h["attrs"].get("class") or "")]
    assert folded == ["GFLOPs/pair", "digits (%)", "shapes (%)", "run id"]
    cells = [dict(zip(headers, (c["text"] for c in row))) for row in runs["rows"]]
    first = {c["run id"]: c for c in cells}[results["run_id"].iloc[1]]
    assert (first["average (%)"], first["digits (%)"], first["C_paper (GFLOPs)"]) == ("10.0", "5.0", "5.00e+02")
    assert {c["reference"] for c in cells} == {"-", "reference (tiny-m)"}  # no run id with its hash
    assert "failed: RuntimeError: out of memory" in {c["status"] for c in cells}
    mean_headers = [h["text"] for h in means["headers"]]
    assert mean_headers[:7] == ["method", "model", "samples seen", "reference", "seeds", "average (%)", "sd (pts)"]
    best = dict(zip(mean_headers, (c["text"] for c in means["rows"][0])))
    assert (best["method"], best["seeds"], best["average (%)"]) == ("drrho", "2", "13.5")
    assert "95% CI (pts)" in [h["text"] for h in compared["headers"]]
