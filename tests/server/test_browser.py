"""The web page at ``/`` in a real browser (Debian's Chromium, driven by Playwright) over a real server with a token.

The browser test walks the page as a user would: the token from ``#token=``, the view list, the live table updated
through the subscription (no reload), one output's heat map, dependencies and decision log, the cost chart and the
change log. It saves its screenshot under pytest's ``tmp_path`` and leaves ``docs/server.png`` (the one the docs
show) alone; to refresh that picture, run the test with ``-s`` and copy the file it names over ``docs/server.png``.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from fastapi.testclient import TestClient

from deltamem.server import create_app
from tests.server.conftest import LiveServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TOKEN = "page-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "server.png"
WAIT_MS = 20_000  # generous: the machine running the tests may be busy


def test_page_and_static_files_need_no_token_but_the_api_does(seeded_db):
    client = TestClient(create_app(seeded_db, token=TOKEN), base_url="http://127.0.0.1")

    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/app.js">' in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert client.get("/views").status_code == 401
    assert client.get("/views", headers=AUTH).status_code == 200


def test_page_in_a_browser(seeded_db, serve, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).exists(), (
        f"The browser test needs Chromium at {CHROMIUM}: install Debian's package (apt-get install chromium)")
    server = serve(seeded_db, token=TOKEN)
    docs_picture = _fingerprint(DOCS_SCREENSHOT)
    screenshot = tmp_path / "server.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            _asks_for_the_token(browser, server.url, expect)
            _walk_the_page(browser, server.url, expect, screenshot)
        finally:
            browser.close()
    print(f"screenshot: {screenshot}")
    assert _fingerprint(DOCS_SCREENSHOT) == docs_picture, "the test overwrote docs/server.png in the work tree"


def test_page_resumes_its_subscription_after_the_server_restarts(seeded_db):
    """The live table follows the view across a server restart: it reconnects with Last-Event-ID, gets the row
    written while it was away, and repeats none it had."""
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).exists(), (
        f"The browser test needs Chromium at {CHROMIUM}: install Debian's package (apt-get install chromium)")
    server = LiveServer(create_app(seeded_db, token=TOKEN))
    port = int(server.url.rsplit(":", 1)[1])
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            resumed_from: list[str | None] = []
            page.on("request", lambda request: resumed_from.append(request.headers.get("last-event-id"))
                    if "/subscribe" in request.url else None)
            page.goto(f"{server.url}/#token={TOKEN}")
            page.locator('#views [data-view="answers"]').click()
            live = page.locator("#live")
            expect(live).to_have_attribute("data-state", "live", timeout=WAIT_MS)
            _post(server.url, "questions", {"id": "q3", "question": "When does support answer chats?"})
            q3 = page.locator("""#live-table tbody tr[data-key='"q3"']""")
            expect(q3).to_be_visible(timeout=WAIT_MS)

            server.stop()
            expect(live).to_have_attribute("data-state", "reconnecting", timeout=WAIT_MS)
            # Markup in data is shown as text, never parsed.
            seeded_db.table("questions").upsert({"id": "q4", "question": "<b>How long</b> do orders take?"})
            seeded_db.maintain(timeout=30)
            server = _serve_on(create_app(seeded_db, token=TOKEN), port)

            q4 = page.locator("""#live-table tbody tr[data-key='"q4"']""")
            expect(q4).to_be_visible(timeout=WAIT_MS)
            expect(q4).to_contain_text("<b>How long</b> do orders take?")
            expect(q4.locator("b")).to_have_count(0)
            expect(live).to_have_attribute("data-state", "live")
            expect(page.locator("#live-table tbody tr")).to_have_count(4)
            expect(q3).not_to_have_class(re.compile(r"\bupdated\b"))  # a repeated +1 would flash as an update
            assert resumed_from[0] is None and resumed_from[-1] is not None, resumed_from
        finally:
            browser.close()
            server.stop()


def _serve_on(app, port: int) -> LiveServer:
    """A ``LiveServer`` on a given port (the one a stopped server had), so the page can reconnect to it."""
    server = LiveServer.__new__(LiveServer)
    server.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                  timeout_graceful_shutdown=2))
    server.thread = threading.Thread(target=server.server.run, daemon=True)
    server.thread.start()
    deadline = time.monotonic() + 20
    while not server.server.started:
        assert time.monotonic() < deadline and server.thread.is_alive(), f"uvicorn did not start on port {port}"
        time.sleep(0.02)
    server.url = f"http://127.0.0.1:{port}"
    return server


def _asks_for_the_token(browser, url, expect):
    """Without a token the page shows the token form, and continues once it is given."""
    page = browser.new_page()
    page.goto(f"{url}/")
    form = page.locator(".token-form")
    expect(form).to_be_visible(timeout=WAIT_MS)
    form.locator("input").fill(TOKEN)
    form.locator("button[type=submit]").click()
    expect(page.locator('#views [data-view="answers"]')).to_be_visible(timeout=WAIT_MS)
    page.close()


def _walk_the_page(browser, url, expect, screenshot: Path):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(f"{url}/#token={TOKEN}")

    # The views, with their freshness; the token has left the address bar.
    for name in ("summaries", "answers"):
        expect(page.locator(f'#views [data-view="{name}"]')).to_be_visible(timeout=WAIT_MS)
    expect(page.locator('#views [data-view="answers"] .badge')).to_have_text("fresh")
    assert "token" not in page.url

    page.locator('#views [data-view="answers"]').click()
    expect(page.locator("#view-title")).to_have_text("answers")
    rows = page.locator("#live-table tbody tr")
    expect(rows).to_have_count(2, timeout=WAIT_MS)
    expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=WAIT_MS)

    # Changes written through the API arrive through the subscription: the page is never reloaded. An edited
    # document changes an answer in place; a new question adds a row.
    page.evaluate("window.__sameDocument = true")
    _post(url, "docs", {"id": "refunds", "text": "Refunds are issued within 10 days. Store credit never expires."})
    q1 = page.locator("""#live-table tbody tr[data-key='"q1"']""")
    expect(q1).to_contain_text("within 10 days", timeout=WAIT_MS)
    version = _post(url, "questions", {"id": "q3", "question": "When does support answer chats?"})
    q3 = page.locator("""#live-table tbody tr[data-key='"q3"']""")
    expect(q3).to_be_visible(timeout=WAIT_MS)
    expect(q3).to_contain_text("When does support answer chats?")
    expect(q3).to_have_class(re.compile(r"\binserted\b"))
    expect(rows).to_have_count(3)
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded instead of applying the changes"
    expect(page.locator("#view-version")).to_have_text(f"version {version}", timeout=WAIT_MS)

    # One output: the heat map drawn from the attribution matrix, the dependencies and the decision log. q1 was
    # patched in place (no call), so it has no attention to draw and says why; q3 was generated.
    detail = page.locator("#detail")
    q1.click()
    expect(detail.locator("h2")).to_have_text("q1", timeout=WAIT_MS)
    q1_report = _explain(url, "q1")
    if next(iter(q1_report["dependencies"].values()))["attribution"] is None:
        expect(detail).to_contain_text("needs an LLM_GENERATE answer made by a backend with attention")
    expect(detail.locator("table.decisions tbody tr")).to_have_count(len(q1_report["decisions"]))

    q3.click()
    expect(detail.locator("h2")).to_have_text("q3", timeout=WAIT_MS)
    expect(q3).to_have_class(re.compile(r"\bselected\b"))
    expect(q1).not_to_have_class(re.compile(r"\bselected\b"))
    report = _explain(url, "q3")
    dependency = next(iter(report["dependencies"].values()))
    attribution = dependency["attribution"]
    expect(detail.locator(".heatmap .hm-cell")).to_have_count(len(attribution["matrix"]) * len(attribution["context"]))
    expect(detail.locator(".heatmap .hm-row")).to_have_count(len(attribution["output_sentences"]))
    expect(detail.locator(".heatmap .hm-row").first).to_have_text(attribution["output_sentences"][0])
    expect(detail.locator(".heatmap .hm-col")).to_have_count(len(attribution["context"]))
    expect(detail.locator(".hm-legend")).to_be_visible()
    expect(detail.locator(".deps li")).to_have_count(len(dependency["provenance"]))
    expect(detail.locator(".deps")).to_contain_text("Refunds are issued within 10 days.")
    decisions = detail.locator("table.decisions tbody tr")
    expect(decisions).to_have_count(len(report["decisions"]))
    newest = max(report["decisions"], key=lambda decision: decision["version"])
    expect(decisions.first).to_contain_text(newest["strategy"])
    with page.expect_download() as download:  # the PNG needs the token too: the page fetches it as a blob
        detail.locator(".hm-foot a", has_text="PNG").click()
    assert download.value.suggested_filename == "answers-q3-heatmap.png"

    # The cost chart and the change log catch up with the new version.
    _wait_until_fresh(url)
    history = httpx.get(f"{url}/usage/history", headers=AUTH).json()
    expect(page.locator("#cost-chart svg path.line.paid")).to_have_count(1)
    expect(page.locator("#cost-chart svg path.line.full")).to_have_count(1)
    expect(page.locator("#cost-chart .end-label.paid")).to_have_text(f"paid {history[-1]['paid_calls']}",
                                                                     timeout=WAIT_MS)
    expect(page.locator("#cost-chart .end-label.full")).to_have_text(f"full {history[-1]['full_calls']}")
    commit = page.locator(f'#changelog tr[data-version="{version}"]')
    expect(commit).to_be_visible(timeout=WAIT_MS)
    expect(commit).to_contain_text("questions")
    expect(commit.locator(".chip.ins")).to_have_text("+1")
    expect(page.locator('#changelog tr[data-version] .tname', has_text="docs").first).to_be_visible()

    page.screenshot(path=str(screenshot), full_page=True, animations="disabled")
    assert screenshot.stat().st_size > 20_000
    assert not errors, f"the page logged errors: {errors}"
    page.close()


def _fingerprint(path: Path) -> tuple[int, bytes] | None:
    # The modification time too: a rewrite with the very same pixels is still a write to the work tree.
    return (path.stat().st_mtime_ns, path.read_bytes()) if path.exists() else None


def _post(url: str, table: str, row: dict) -> int:
    """Upserts ``row`` into ``table`` through the API; returns the version it committed as."""
    applied = httpx.post(f"{url}/tables/{table}/changes", headers=AUTH, json=[{"op": "upsert", "row": row}])
    applied.raise_for_status()
    return applied.json()["version"]


def _wait_until_fresh(url: str) -> None:
    """Waits until every view reflects the latest version, so the costs read next are final."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while any(view["lag_versions"] for view in httpx.get(f"{url}/views", headers=AUTH).json()):
        assert time.monotonic() < deadline, "the views did not catch up"
        time.sleep(0.1)


def _explain(url: str, key: str) -> dict:
    return httpx.get(f'{url}/views/answers/rows/"{key}"/explain', headers=AUTH).json()
