"""The status page in a real browser: headless Chromium from Debian's packages, driven by
Playwright (its Python package; nothing downloads a browser), against the real trigger daemon on
loopback and the real worker over a lake the demo data built. And the static report, opened from
file:// with no server.

The tests share one daemon and lake and run in file order: the first builds the lake by clicking
Materialize and watches that run live; the later ones read the lake it built (a fixture builds it
over the API if that test did not). No test asserts a timing: every wait is a bounded poll.

Screenshots of the main views go to the test's temporary folder, or to QUANTLENS_SCREENSHOTS
(`QUANTLENS_SCREENSHOTS=docs/screenshots pytest tests/test_page.py` refreshes the ones in docs/)."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from deltalake import DeltaTable

from trigger_support import REPO, Daemon, base_env, wait_for, worker_binary

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = os.environ.get("QUANTLENS_CHROMIUM", "/usr/bin/chromium")
# Chromium on a machine with no way out: no background connections, no updates, no sandbox
# (the tests run as root in CI).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "page-test-token"
ASSETS = ["bronze/prices", "silver/prices", "gold/returns", "gold/market_daily",
          "gold/high_low_52w", "gold/symbol_summary"]
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Demo landing data (200 symbols x 500 days: a full build takes seconds in a debug build,
    long enough to watch), the shipped SQL assets, and a daemon with a token in front."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt install chromium)")
    root = tmp_path_factory.mktemp("page")
    data, state, assets = root / "data", root / "state", root / "assets"
    shutil.copytree(REPO / "assets", assets)
    env = base_env(DATA_ROOT=data, STATE_DIR=state, ASSETS_DIR=assets)
    subprocess.run([str(worker_binary()), "demo", "--symbols", "200", "--days", "500"],
                   env=env, check=True, capture_output=True, timeout=300)
    daemon = Daemon(root, worker_binary(), token=TOKEN,
                    env=dict(env, QUANTLENS_TRIGGER_TOKEN=TOKEN))
    screenshots = Path(os.environ.get("QUANTLENS_SCREENSHOTS", root / "screenshots"))
    screenshots.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield Site(root, data, state, assets, env, daemon, browser, screenshots)
        browser.close()
    daemon.terminate(timeout=60)


class Site:
    def __init__(self, root, data, state, assets, env, daemon, browser, screenshots):
        self.root, self.data, self.state, self.assets, self.env = root, data, state, assets, env
        self.daemon, self.browser, self.screenshots = daemon, browser, screenshots
        self.url = f"http://127.0.0.1:{daemon.port}/"

    def open(self, hash_="", token=TOKEN, url=None):
        """A fresh tab (its own sessionStorage) on the page, or on `url`; with `token`, as if it
        had been entered once in this tab. Console errors are collected."""
        context = self.browser.new_context(viewport={"width": 1400, "height": 900})
        if token:
            context.add_init_script(f"sessionStorage.setItem('quantlens-token', {token!r})")
        page = context.new_page()
        page.errors = []
        page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: page.errors.append(f"uncaught: {e}"))
        page.set_default_timeout(WAIT_MS)
        page.goto(url or self.url + hash_)
        return page

    def built(self):
        """The lake after a successful run, started over the API when no test built it yet."""
        if not self.last_success():
            self.daemon.wait_idle(timeout=600)
            if not self.last_success():
                run_id = self.daemon.post(body={"select": "*"}).json["run_id"]
                self.daemon.wait_run(run_id, timeout=600)
            assert self.last_success(), self.daemon.get("/runs").json
        self.daemon.wait_idle(timeout=600)
        return self.daemon.get("/assets").json

    def last_success(self):
        return self.daemon.get("/health").json["last_success"]


def each(locator, attribute):
    """The attribute of every element the locator finds, waiting for the first."""
    locator.first.wait_for()
    return [locator.nth(i).get_attribute(attribute) for i in range(locator.count())]


def only_expected(errors, *statuses):
    """Console errors other than Chromium's own line for an expected HTTP answer."""
    allowed = [f"status of {s}" for s in statuses]
    return [e for e in errors if not any(a in e for a in allowed)]


def test_materialize_builds_the_lake_and_the_run_is_followed_live(site):
    page = site.open()
    # No run yet: the assets view says so instead of failing.
    page.get_by_text("no catalog yet").wait_for()
    page.click("#materialize button")
    # 202: the page moves to the new run and follows it.
    page.wait_for_url(re.compile(r"#/runs/[A-Za-z0-9]"))
    run_id = page.url.rsplit("/", 1)[1]
    assert page.locator("#notice").inner_text().startswith(f"Started run {run_id}")
    page.locator("h2 .badge.running").wait_for()
    first = page.locator("#log").inner_text()
    # The log grows on screen while the run is still running.
    page.wait_for_function(
        """(first) => document.getElementById('log').textContent.length > first.length
                      && document.querySelector('h2 .badge.running') !== null""", arg=first)
    # A second click while it runs: the daemon answers 409 and the page says so.
    page.click("#materialize button")
    page.locator("#notice", has_text="Already running").wait_for()
    assert run_id in page.locator("#notice").inner_text()
    page.locator("h2 .badge.succeeded").wait_for(timeout=600_000)
    assert "run " + run_id + " succeeded" in page.locator("#log").inner_text()
    # The timeline: a bar per asset, each succeeded.
    rows = page.locator(".gantt .row")
    assert rows.count() == len(ASSETS)
    assert page.locator(".gantt .bar.succeeded").count() == len(ASSETS)
    # Chromium logs the 404 of /assets before the first run and the 409 of the second click.
    assert only_expected(page.errors, 404, 409) == []
    page.context.close()


def test_the_assets_view_shows_every_asset_with_its_version_and_rows(site):
    catalog = site.built()
    page = site.open("#/assets")
    assert sorted(each(page.locator("table.assets tr[data-asset]"), "data-asset")) == sorted(ASSETS)
    for key in ASSETS:
        # Read back independently: the table's own Delta log.
        table = DeltaTable(str(site.data / key))
        rows = table.to_pyarrow_table().num_rows
        row = page.locator(f'tr[data-asset="{key}"]')
        assert row.locator("td.version").inner_text() == str(table.version()), key
        assert row.locator("td.rows").inner_text() == f"{rows:,}", key
        kind = "SQL" if key in ("gold/high_low_52w", "gold/symbol_summary") else "Rust"
        assert row.locator("td.kind").inner_text() == kind
        assert "UTC" in row.locator("td.materialised").inner_text()
    assert page.locator('tr[data-asset="silver/prices"]').get_attribute("data-state") == "fresh"
    # The health banner: the run just made it healthy.
    assert page.locator("#health").get_attribute("data-status") == "ok"
    assert "freshness bound 26 h" in page.locator("#health").inner_text()
    page.screenshot(path=site.screenshots / "assets.png", full_page=True)
    # One asset's page: its checks in the last run.
    page.click('tr[data-asset="gold/high_low_52w"] td.key a')
    page.locator("h2", has_text="gold/high_low_52w").wait_for()
    assert page.locator("table.checks tbody tr").count() == 5
    assert catalog["run_id"] in page.locator("dl.facts").inner_text()
    assert page.errors == []
    page.context.close()


def test_the_lineage_draws_a_node_per_asset_and_an_edge_per_dependency(site):
    catalog = site.built()
    page = site.open("#/lineage")
    assert sorted(each(page.locator("svg.lineage g.node"), "data-asset")) == sorted(ASSETS)
    edges = page.locator("svg.lineage path.edge")
    drawn = sorted((edges.nth(i).get_attribute("data-from"), edges.nth(i).get_attribute("data-to"))
                   for i in range(edges.count()))
    assert drawn == sorted(tuple(e) for e in catalog["edges"])
    assert ("silver/prices", "gold/high_low_52w") in drawn
    assert ("gold/returns", "gold/symbol_summary") in drawn
    assert page.locator('g.node[data-asset="gold/returns"]').get_attribute("data-state") == "fresh"
    page.screenshot(path=site.screenshots / "lineage.png", full_page=True)
    page.click('g.node[data-asset="gold/returns"]')
    page.wait_for_url(re.compile(r"#/assets/gold/returns$"))
    page.locator("h2", has_text="gold/returns").wait_for()
    assert page.errors == []
    page.context.close()


def test_the_runs_view_and_a_run_page(site):
    site.built()
    page = site.open("#/runs")
    page.locator("table.runs tr[data-run]").first.wait_for()
    runs = site.daemon.get("/runs").json["runs"]
    shown = page.locator("table.runs tr[data-run]")
    assert shown.count() == len(runs)
    newest = shown.first
    assert newest.get_attribute("data-run") == runs[0]["run_id"]
    assert newest.locator("td").nth(2).inner_text() == "http"
    newest.locator("a").click()
    page.locator(".gantt .row").first.wait_for()
    page.locator("table.events tbody tr").first.wait_for()
    page.screenshot(path=site.screenshots / "run.png", full_page=True)
    assert page.errors == []
    page.context.close()


def test_the_static_report_opens_from_a_file_with_the_same_assets(site, tmp_path):
    catalog = site.built()
    out = tmp_path / "status.html"
    subprocess.run([str(worker_binary()), "report", "--out", str(out)], env=site.env, check=True,
                   capture_output=True, timeout=300)
    page = site.open(token=None, url=out.as_uri())
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.reload()
    page.locator("table.assets tr[data-asset]").first.wait_for()
    live = {e["table"]: e for e in catalog["assets"]}
    shown = page.locator("table.assets tr[data-asset]")
    assert shown.count() == len(ASSETS)
    for key in ASSETS:
        row = page.locator(f'tr[data-asset="{key}"]')
        assert row.locator("td.version").inner_text() == str(live[key]["version"])
        assert row.locator("td.rows").inner_text() == f"{live[key]['rows']:,}"
    # Read-only, and nothing is fetched: the only request is the file itself.
    assert page.locator("#materialize").is_hidden()
    assert requests == [out.as_uri()], requests
    assert "Static report" in page.locator("footer").inner_text()
    # The other views work from the inlined data too.
    page.click("header nav a[data-view=lineage]")
    assert len(each(page.locator("svg.lineage g.node"), "data-asset")) == len(ASSETS)
    page.click("header nav a[data-view=runs]")
    page.locator("table.runs tr[data-run] a").first.click()
    page.locator(".gantt .row").first.wait_for()
    assert requests == [out.as_uri()], requests
    assert page.errors == []
    page.context.close()

    # `materialize --report` refreshes it at the end of a run.
    site.daemon.wait_idle(timeout=600)
    result = subprocess.run([str(worker_binary()), "materialize", "--run-id", "with-report",
                             "--report", str(out)], env=site.env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert "with-report" in out.read_text()


def test_a_blocking_check_failure_shows_as_a_failed_run_with_its_error(site):
    site.built()
    doomed = site.assets / "gold" / "doomed.sql"
    doomed.write_text("-- quantlens:\n--   materialize: table\n--   checks:\n"
                      "--     - row_count: {min: 1000000000}\n"
                      "SELECT symbol, count(*) AS days FROM gold_returns GROUP BY symbol\n")
    try:
        page = site.open("#/runs")
        page.fill("#selection", "gold/doomed")
        page.click("#materialize button")
        page.wait_for_url(re.compile(r"#/runs/[A-Za-z0-9]"))
        page.locator("h2 .badge.failed").wait_for(timeout=600_000)
        error = page.locator(".asset-errors").inner_text()
        assert "gold/doomed" in error and "blocking check `row_count` failed" in error, error
        assert "gold/doomed" in page.locator(".run-error").inner_text()
        assert page.locator('.gantt .row[data-asset="gold/doomed"] .bar.failed').count() == 1
        # The asset's page shows the failed check too.
        page.goto(site.url + "#/assets/gold/doomed")
        page.locator("table.checks tbody tr").first.wait_for()
        assert "failed" in page.locator("h2 .badge").inner_text()
        assert page.errors == []
        page.context.close()
    finally:
        doomed.unlink()


def test_the_token_is_asked_once_per_tab_and_a_wrong_one_is_refused(site):
    site.built()
    page = site.open(token=None)
    page.locator("#token-form").wait_for()
    assert page.locator("table.assets").count() == 0
    page.fill("#token", "not-the-token")
    page.click("#token-form button")
    page.locator("#notice", has_text="That token was refused").wait_for()
    assert page.locator("#token-form").is_visible()
    assert page.locator("table.assets").count() == 0
    page.fill("#token", TOKEN)
    page.click("#token-form button")
    page.locator("table.assets tr[data-asset]").first.wait_for()
    assert page.locator("#token-form").is_hidden()
    # Kept for the tab: a reload needs no token; another tab asks again.
    page.reload()
    page.locator("table.assets tr[data-asset]").first.wait_for()
    other = page.context.new_page()
    other.goto(site.url)
    other.locator("#token-form").wait_for()
    assert only_expected(page.errors, 401) == []
    page.context.close()


def test_the_page_is_served_with_a_strict_policy(site):
    for path, kind in (("/", "text/html"), ("/app.js", "text/javascript"), ("/app.css", "text/css")):
        r = site.daemon.get(path, auth=False)
        assert r.status == 200 and r.headers["content-type"].startswith(kind), (path, r)
        policy = r.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "default-src 'none'" in policy
        assert "unsafe-inline" not in policy
        assert r.headers["x-content-type-options"] == "nosniff"
    html = site.daemon.get("/", auth=False).raw.decode()
    assert "<script>" not in html and "style=" not in html, "no inline script or style"
    # The data is not: without the token, 401.
    assert site.daemon.get("/assets", auth=False).status == 401
    assert site.daemon.get("/runs/x/events", auth=False).status == 401
