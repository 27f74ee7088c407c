"""The HTML report on a realistic evaluation (four systems, cutoffs 10/25/100, held-out engagement):
its content, and the page in headless Chromium at 1400 and 800 px without any network request."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from unisup.config import load_config
from unisup.evaluation import evaluate, precomputed_system, read_results, write_outputs
from unisup.report import display_names, headline, inputs, render_report, values_pivot, win_tie_loss

ITEMS = [f"p{j:04d}" for j in range(600)]
SYSTEMS = ["candidate", "engagement_only", "bm25", "minilm"]


def _ranking(rng, judged: dict[str, int], quality: float) -> list[str]:
    """100 items: judged ones ordered by grade plus noise of 1/``quality``, mixed with unjudged ones."""
    scored = [(g * quality + rng.normal(), d) for d, g in judged.items()]
    scored += [(rng.normal() + 0.5, d) for d in rng.choice(ITEMS, 80, replace=False) if d not in judged]
    return [d for _, d in sorted(scored, reverse=True)][:100]


@pytest.fixture(scope="module")
def result():
    """120 judged queries, engagement on 60 of them; the candidate a little better than engagement_only."""
    rng = np.random.default_rng(11)
    qrels = {}
    for i in range(120):
        items = rng.choice(ITEMS, 40, replace=False)
        qrels[f"query {i:03d}"] = {str(d): int(g) for d, g in zip(items, rng.integers(0, 4, 40))}
    quality = {"candidate": 1.1, "engagement_only": 0.9, "bm25": 0.6, "minilm": 0.4}
    rankings = {s: {q: _ranking(rng, j, quality[s]) for q, j in qrels.items()} for s in SYSTEMS}
    rows = {"query": [], "item_id": [], "impressions": [], "clicks": [], "conversions": []}
    for n, q in enumerate(list(qrels)[:60]):
        for pos, item in enumerate(sorted(qrels[q], key=lambda d: -qrels[q][d])[:5]):
            rows["query"].append(q)
            rows["item_id"].append(item)
            rows["impressions"].append(200 - n)
            rows["clicks"].append(1)
            rows["conversions"].append(int(pos == 0))
    from unisup.evaluation import engagement_targets

    cfg = dataclasses.replace(
        load_config("local").evaluation,
        n_bootstrap=300,
        cutoffs=[10, 25, 100],
        depth=100,
        gate_baselines=["engagement_only"],
    )
    systems = [precomputed_system(s, rankings[s]) for s in SYSTEMS]
    out = evaluate(systems[0], systems[1:], qrels, cfg, engagement=engagement_targets(pa.table(rows), 100))
    out.settings.update(
        {
            "judgments_uri": "gs://bucket/data/judgments.csv",
            "split": "test",
            "engagement_uri": "gs://bucket/root/run-7/extract/holdout",
            "catalog": {"uri": "gs://bucket/data/products.parquet", "digest": "sha256:abc", "items": 600},
            "candidate_model": "gs://bucket/root/run-7/train/model",
            "candidate_model_digest": "sha256:m1",
            "candidate_index": "gs://bucket/root/run-7/build-index/index",
            "candidate_index_digest": "sha256:i1",
            "model_baselines": [["engagement_only", "gs://bucket/root/run-7/train-2/model", "gs://bucket/i2"]],
            "preset": "unified",
            "code_version": "unisup 0.1.0 (git 0123456789ab)",
            "evaluated_at": "2026-12-02 17:00:00 UTC",
            "config": "cluster",
            "overrides": ["fusion.preset=unified", "evaluation.gate_baselines=[engagement_only]"],
            "run_id": "0f1e2d3c-run-7",
        }
    )
    return out


@pytest.fixture(scope="module")
def page(result):
    return render_report(result)


# ---------------------------------------------------------------- content


def test_the_candidate_is_named_by_its_preset_and_systems_keep_one_order(result, page):
    assert list(display_names(result).values()) == ["unified", "engagement_only", "bm25", "minilm"]
    headers, _ = values_pivot(result)
    assert headers[-4:] == ["unified", "engagement_only", "bm25", "minilm"]
    key = page[page.index('class="key"') :]
    positions = [key.index(f"{n} (") for n in ["unified", "engagement_only", "bm25", "minilm"]]
    assert positions == sorted(positions)
    assert ">candidate<" not in page and "candidate (" not in page


def test_headline_names_winner_delta_ci_and_the_failed_gates(result):
    row = result.value("ndcg@10", "candidate", "engagement_only")
    text = headline(result)
    assert text.startswith("<b>unified</b>")
    verb = "beats" if row["ci_low"] > 0 else "loses to" if row["ci_high"] < 0 else "is not separated from"
    assert f"{verb}</span> <b>engagement_only</b> on ndcg@10: delta {row['delta']:+.4f}" in text
    assert f"95% CI [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]" in text and "120 judged queries" in text
    failed = [n for n, g in result.blessing["gates"].items() if not g["passed"]]
    if failed:
        assert "Not blessed" in text and all(f"<code>{n}</code>" in text for n in failed)
    else:
        assert f"all {len(result.blessing['gates'])} gates passed" in text


def test_headline_lists_a_failed_gate_with_its_reason(result):
    gates = dict(result.blessing["gates"])
    gates["min_queries"] = {**gates["min_queries"], "passed": False, "reason": "120 judged queries < the 500 required"}
    failing = dataclasses.replace(result, blessing={**result.blessing, "gates": gates, "blessed": False})
    text = headline(failing)
    assert "<code>min_queries</code>: 120 judged queries &lt; the 500 required" in text
    assert 'class="fail">Not blessed' in text


def test_win_tie_loss_counts_add_up_to_the_queries_and_follow_the_deltas(result, page):
    deltas, counts = win_tie_loss(result, "bm25")
    assert sum(counts.values()) == len(deltas) == 120
    assert counts["wins"] == sum(d > 1e-9 for d in deltas) and counts["losses"] == sum(d < -1e-9 for d in deltas)
    _, same = win_tie_loss(result, "bm25", "grade0_share@10")  # lower is better: a negative delta wins
    per_query = result.per_query
    g0 = [
        per_query["candidate"]["grade0_share@10"][q] - per_query["bm25"]["grade0_share@10"][q]
        for q in per_query["candidate"]["grade0_share@10"]
    ]
    assert same["wins"] == sum(d < -1e-9 for d in g0 if not np.isnan(d))
    assert page.count("<figure>") >= 1 + 4 + 3  # forest, cutoff plots, per-query deltas, ...


def test_forest_plot_draws_gates_in_range_and_writes_far_ones_at_the_edge(result):
    from unisup.report import forest_metrics, forest_plot

    fig = forest_plot(result)
    ax = fig.axes[0]
    assert len(ax.get_yticklabels()) == len(forest_metrics(result)) * 3
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 3  # ndcg@10, grade0_share@10, engagement_recall@10 against engagement_only
    assert [t.get_text() for t in ax.texts] == []
    ev = {**result.settings["evaluation"], "gate_min_delta_ci_low": -1e9}
    far = forest_plot(dataclasses.replace(result, settings={**result.settings, "evaluation": ev})).axes[0]
    assert far.get_xlim()[0] > -1 and [t.get_text() for t in far.texts] == ["◂ gate -1e+09"]
    assert len([line for line in far.get_lines() if line.get_linestyle() == "--"]) == 2


def test_inputs_gates_and_the_folded_pivot_are_rendered(result, page):
    for _, value in inputs(result):
        assert value.replace("&", "&amp;").split(" (")[0] in page
    for needle in ("0f1e2d3c-run-7", "cluster", "unisup 0.1.0 (git 0123456789ab)", "gs://bucket/i2", "unified"):
        assert needle in page
    row = result.value("ndcg@10", "candidate", "engagement_only")
    gates = page[page.index("<h2>Blessing gates</h2>") : page.index("<h2>Paired deltas")]
    assert f"<td>{row['delta']:+.4f}</td><td>[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]</td>" in gates
    details = page[page.index("<details>") : page.index("</details>")]
    _, pivot = values_pivot(result)
    assert (
        details.count("<tr>")
        == len(pivot) + 1
        == result.table.filter(pa.compute.is_null(result.table["baseline"])).num_rows // 4 + 1
    )
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert not re.search(r'(src|href)="(?!data:)', page)


def test_the_report_renders_from_the_results_json_too(result, page, tmp_path):
    """The push and the ablation read results back from JSON, where NaN became null."""
    uris = {k: str(tmp_path / n) for k, n in [("results", "r.parquet"), ("json", "r.json"), ("report", "r.html")]}
    write_outputs(result, {**uris, "blessing": str(tmp_path / "b.json")})
    again = read_results(uris["json"])
    assert json.loads(Path(uris["json"]).read_text())["settings"]["run_id"] == "0f1e2d3c-run-7"
    assert Path(uris["report"]).read_text() == page
    assert render_report(again) == page


# ---------------------------------------------------------------- the page in headless Chromium

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    return None


class DevTools:
    """Headless Chromium driven over the DevTools protocol on its pipe (fd 3 in, fd 4 out,
    NUL-terminated JSON): the page's every network request is seen as a Network event."""

    def __init__(self, binary: str, profile: str):
        # the shell gives the browser our stdin as fd 3 and our stdout as fd 4
        self.proc = subprocess.Popen(
            [
                "sh",
                "-c",
                'exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null',
                binary,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.next_id, self.buffer, self.events = 0, b"", []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def read(self) -> dict:
        while b"\0" not in self.buffer:
            chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: bool = False, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self.proc.stdin.write(json.dumps(message).encode() + b"\0")
        self.proc.stdin.flush()
        while True:
            reply = self.read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(method)
            self.events.append(self.read())

    def requests(self) -> list[str]:
        """URLs of every request the page sent since the events were last cleared."""
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def open(self, uri: str, width: int, mobile: bool, wait: str = "Page.loadEventFired") -> None:
        self.call(
            "Emulation.setDeviceMetricsOverride", True, width=width, height=1000, deviceScaleFactor=1, mobile=mobile
        )
        self.events.clear()
        self.call("Page.navigate", True, url=uri)
        self.wait_for(wait)

    def page(self, expression: str):
        return self.call("Runtime.evaluate", True, expression=expression, returnByValue=True)["result"]["value"]

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


LAYOUT = """(() => {
  const imgs = [...document.images].map(i => ({shown: i.getBoundingClientRect().width,
    wanted: parseFloat(i.style.width), loaded: i.complete && i.naturalWidth > 0}));
  const wide = [...document.querySelectorAll('.scroll')].filter(d => d.scrollWidth > d.clientWidth).length;
  return {width: document.documentElement.clientWidth, scrollWidth: document.documentElement.scrollWidth,
    height: document.documentElement.scrollHeight, imgs, wide,
    detailsOpen: document.querySelector('details').open};
})()"""


@pytest.fixture()
def browser(tmp_path):
    """Headless Chromium with the Network and Page domains on; skips only where there is no Chromium."""
    binary = _chromium()
    if binary is None:
        pytest.skip("no Chromium found (Debian: apt-get install -y chromium; .ci/run installs it as root)")
    devtools = DevTools(binary, tempfile.mkdtemp(prefix="chromium-", dir=tmp_path))
    try:
        devtools.call("Network.enable", True)
        devtools.call("Page.enable", True)
        yield devtools
    finally:
        devtools.close()


def test_the_network_check_sees_a_page_that_reaches_out(browser, tmp_path):
    """The control: a page with an external image and stylesheet shows both requests."""
    path = tmp_path / "outside.html"
    path.write_text(
        '<!DOCTYPE html><html><head><link rel="stylesheet" href="https://example.invalid/a.css"></head>'
        '<body><img src="http://example.invalid/b.png"></body></html>'
    )
    browser.open(path.as_uri(), 800, True, wait="Page.domContentEventFired")
    deadline = time.monotonic() + 60
    while {"https://example.invalid/a.css", "http://example.invalid/b.png"} - set(browser.requests()):
        assert time.monotonic() < deadline, browser.requests()
        browser.events.append(browser.read())


def test_the_page_in_headless_chromium_at_1400_and_800_px_loads_nothing_from_the_network(page, browser, tmp_path):
    path = tmp_path / "report.html"
    path.write_text(page)
    shots = {}
    for width, mobile in ((1400, False), (800, True)):
        browser.open(path.as_uri(), width, mobile)
        layout = browser.page(LAYOUT)
        shot = browser.call(
            "Page.captureScreenshot",
            True,
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": width, "height": layout["height"], "scale": 1},
        )
        shots[width] = tmp_path / f"report-{width}.png"
        shots[width].write_bytes(base64.b64decode(shot["data"]))
        requests = browser.requests()
        # the page itself and its inline data: images; nothing else, on any scheme
        assert path.as_uri() in requests
        assert [u for u in requests if u != path.as_uri() and not u.startswith("data:")] == []
        assert not [e for e in browser.events if e.get("method") == "Network.loadingFailed"]
        # the viewport meta tag: a mobile-emulated 800 px screen lays the page out at 800 px, not 980
        assert layout["width"] == width and layout["scrollWidth"] <= width
        assert layout["imgs"] and all(i["loaded"] for i in layout["imgs"])
        # figures are shown at their drawn size (labels stay readable); only tables scroll, inside their box
        assert all(i["shown"] >= min(i["wanted"], width - 40) - 1 for i in layout["imgs"])
        assert layout["detailsOpen"] is False
        if width == 800:
            assert layout["wide"] >= 1  # the gates and the pivot scroll sideways at 800 px
    for png in shots.values():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000
    print(f"screenshots: {shots[1400]} {shots[800]}")
