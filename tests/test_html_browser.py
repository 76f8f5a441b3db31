"""The report page in a real browser: headless Chromium (Debian package chromium), driven over the DevTools protocol
on a pipe, opens a page rendered from a small hand-built results table at 1400 px, clicks a column header and the
fold toggle with the mouse, measures the headline tables and takes a screenshot."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.report.leaderboard import html_page, scaling_analysis
from harness.report.scaling import FitOptions

CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--remote-debugging-pipe"]
WIDTH, HEIGHT = 1400, 900
TIMEOUT_S = 60.0
TASKS = ["task:digits", "task:fashion_mnist", "task:shapes_retrieval"]
REFERENCES = {"ref-m-30k-noisy": 0.42, "ref-s-5k": 0.2}  # reference stage -> average score

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package 'chromium'; "
                                "`make test` installs it where apt is available)")


class Chromium:
    """A headless Chromium speaking the DevTools protocol over the pipe it reads at fd 3 and writes at fd 4."""

    def __init__(self, profile: Path):
        theirs_in, self._out = os.pipe()
        self._in, theirs_out = os.pipe()

        def protocol_fds() -> None:  # in the child, before exec; via high numbers, so one move cannot clobber the other
            os.dup2(theirs_in, 100)
            os.dup2(theirs_out, 101)
            os.dup2(100, 3)
            os.dup2(101, 4)

        self.process = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=False,
                                        preexec_fn=protocol_fds)
        os.close(theirs_in)
        os.close(theirs_out)
        self._buffer, self._id, self.session = b"", 0, None

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._in], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise EOFError(f"chromium closed the protocol pipe (exit code {self.process.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, **params) -> dict:
        """Call a protocol method (in the page once `open` attached one) and return its result; events are skipped."""
        self._id += 1
        request = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            request["sessionId"] = self.session
        os.write(self._out, json.dumps(request).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while (reply := self._message(deadline)).get("id") != self._id:
            pass
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def open(self, url: str) -> None:
        """A new page at WIDTH x HEIGHT showing `url`, loaded."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)
        self.send("Page.navigate", url=url)
        deadline = time.monotonic() + TIMEOUT_S
        while self.evaluate("document.readyState") != "complete":
            assert time.monotonic() < deadline, "the page did not load"
            time.sleep(0.05)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A left mouse click at the middle of the element, scrolled into view first."""
        x, y = self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                             "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
                             "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self) -> Image.Image:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("L")

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.process.wait(timeout=TIMEOUT_S)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            os.close(self._in)
            os.close(self._out)


def _run(stage: str, method: str, seed: int, average: float, *, params: str = "{}", reference: str | None = None,
         samples: int = 20_480, model: str = "tiny-s", status: str = "done", error: str | None = None) -> dict:
    done = status == "done"
    tail = hashlib.sha1(f"{stage} {method} {params} {reference} {seed}".encode()).hexdigest()[:10]
    run_id = f"{stage}-{method}-{model}-n{samples}-s{seed}-{tail}"
    return {"run_id": run_id, "stage": stage, "method": method, "method_params": params, "model": model,
            "samples_seen": samples, "seed": seed, "status": status, "error": error, "is_reference": reference == "",
            "reference": reference or None, "reference_features": "online" if reference else None,
            "gflops_per_pair": 0.008037, "c_paper": 0.008037 * samples, "c_total": 0.0135 * samples,
            **{t: average + d if done else np.nan for t, d in zip(TASKS, (-0.1, 0.05, 0.05))},
            "average": average if done else np.nan, "wall_time_s": 40.0 + seed}


def _results() -> pd.DataFrame:
    """A weak-to-strong grid at one budget: two references, clip and drrho at two taus, two seeds each."""
    refs = [_run(stage, "clip", 0, score, reference="", samples=30_720, model="tiny-m")
            for stage, score in REFERENCES.items()]
    rows = [*refs, *(_run("sweep", "clip", seed, 0.25 + 0.01 * seed) for seed in (0, 1))]
    for ref in refs:
        for tau, shift in (("0.01", 0.0), ("0.03", 0.04)):
            for seed in (0, 1):
                rows.append(_run(f"by-{ref['stage']}", "drrho", seed, ref["average"] - 0.1 + shift + 0.01 * seed,
                                 params=f'{{"gamma_min": 0.2, "tau": {tau}}}', reference=ref["run_id"]))
    rows.append(_run("by-ref-s-5k", "drrho", 2, 0.0, params='{"gamma_min": 0.2, "tau": 0.01}', status="failed",
                     reference=refs[1]["run_id"], error="RuntimeError: CUDA out of memory. " * 4))
    table = pd.DataFrame(rows)
    return table.assign(gain=table["average"] - 0.3, reducible_var=0.5)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    results = _results()
    analysis, _ = scaling_analysis(results, FitOptions(n_boot=0))
    page = root / "leaderboard.html"
    page.write_text(html_page(results, "Browser check", analysis, []), encoding="utf-8")
    chromium = Chromium(root / "profile")
    try:
        chromium.open(page.as_uri())
        yield chromium, results
    finally:
        chromium.close()


def _table(title: str) -> str:
    """A JavaScript expression for the table under the section heading `title`."""
    return (f"[...document.querySelectorAll('section')].find(s => s.querySelector('h2').textContent === "
            f"{json.dumps(title)}).querySelector('table')")


def _column(title: str, header: str) -> str:
    """A JavaScript expression for the texts of one column of a table, top to bottom."""
    return (f"(() => {{ const t = {_table(title)}; const i = [...t.tHead.rows[0].cells].findIndex("
            f"c => c.firstChild.textContent === {json.dumps(header)}); "
            "return [...t.tBodies[0].rows].map(r => r.cells[i].textContent); })()")


def test_clicking_a_header_sorts_the_runs_numerically(browser):
    chromium, results = browser
    runs = results[~results["is_reference"]]
    before = chromium.evaluate(_column("Runs", "run id"))
    assert sorted(before) == sorted(runs["run_id"])
    table = f"#{chromium.evaluate(_table('Runs') + '.id')}"
    headers = chromium.evaluate(f"[...document.querySelector('{table}').tHead.rows[0].cells].map(c => c.textContent)")
    column = headers.index("average (%)") + 1
    chromium.click(f"{table} thead th:nth-child({column})")
    ascending = runs.sort_values("average", kind="stable", na_position="last")
    assert chromium.evaluate(_column("Runs", "average (%)")) == [
        "\u2013" if np.isnan(v) else f"{100 * v:.1f}" for v in ascending["average"]]
    assert chromium.evaluate(f"document.querySelector('{table} thead th:nth-child({column})')"
                             ".getAttribute('aria-sort')") == "ascending"
    chromium.click(f"{table} thead th:nth-child({column})")
    descending = chromium.evaluate(_column("Runs", "average (%)"))
    assert descending[:-1] == [f"{100 * v:.1f}" for v in sorted(runs["average"].dropna(), reverse=True)]
    assert descending[-1] == "\u2013"  # a failed run has no score: last either way


def test_headline_tables_fit_1400_px_and_per_task_columns_unfold(browser):
    chromium, _ = browser
    titles = chromium.evaluate("[...document.querySelectorAll('h2')].map(h => h.textContent)")
    assert titles[:4] == ["Mean over seeds", "Comparisons with clip", "Reference models", "Runs"]
    for title in ("Mean over seeds", "Comparisons with clip", "Runs"):
        wrap = f"{_table(title)}.parentElement"
        scroll, client = chromium.evaluate(f"[{wrap}.scrollWidth, {wrap}.clientWidth]")
        assert scroll <= client, f"{title}: {scroll} px wide in a {client} px box"
    folded = f"{_table('Runs')}.querySelector('td.fold')"
    assert chromium.evaluate(f"getComputedStyle({folded}).display") == "none"
    toggle = chromium.evaluate(f"{_table('Runs')}.closest('section').querySelector('label').htmlFor")
    chromium.click(f"label[for='{toggle}']")
    assert chromium.evaluate(f"getComputedStyle({folded}).display") == "table-cell"
    assert chromium.evaluate(_column("Runs", "digits (%)"))[0].replace(".", "").isdigit()


def test_screenshot_is_not_blank(browser):
    chromium, _ = browser
    chromium.evaluate("window.scrollTo(0, 0)")
    image = chromium.screenshot()
    assert image.size == (WIDTH, HEIGHT)
    pixels = np.asarray(image, dtype=float)
    assert pixels.std() > 20  # text and table rules on white, not an empty or one-colour page
    assert (pixels < 100).mean() > 0.005  # some dark text
