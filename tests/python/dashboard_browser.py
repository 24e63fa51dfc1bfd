"""Drives the Ghost Runner dashboard in headless Chromium (the Debian package, no browser
download) against a running system. Called by crates/gateway/tests/api/browser.rs.

Usage: dashboard_browser.py BASE_URL ADMIN_KEY ARTIFACT_DIR CHROMIUM
Prints one line per screenshot ("screenshot PATH") and "ok" at the end; any failed
expectation raises, so the exit code is non-zero.
"""

import json
import os
import sys
import urllib.error
import urllib.request

from playwright.sync_api import expect, sync_playwright

BASE, KEY, ARTIFACTS, CHROMIUM = sys.argv[1:5]
os.makedirs(ARTIFACTS, exist_ok=True)


def api(method, path, body=None, key=KEY):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(BASE + path, data=data, method=method)
    if key:
        request.add_header("Authorization", "Bearer " + key)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def shot(page, name):
    path = os.path.join(ARTIFACTS, name + ".png")
    page.screenshot(path=path, full_page=True)
    print("screenshot " + path, flush=True)


with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(15000)

    # Without a session: pages redirect to the login form, the JSON API answers 401.
    page.goto(BASE + "/ui/patches")
    expect(page).to_have_url(BASE + "/ui/login?next=%2Fui%2Fpatches")
    status, problem = api("GET", "/v1/patches", key=None)
    assert status == 401, (status, problem)
    assert problem["type"] == "/problems/unauthorized", problem
    shot(page, "01-login")

    # A wrong key is refused; the right one leads on to the page asked for.
    page.fill("#key", "not-a-real-key")
    page.click("button[type=submit]")
    expect(page.locator("p.error")).to_contain_text("unknown API key")
    page.fill("#key", KEY)
    page.click("button[type=submit]")
    expect(page).to_have_url(BASE + "/ui/patches")
    cookies = page.context.cookies()
    session = [c for c in cookies if c["name"] == "ghost_session"]
    assert session and session[0]["httpOnly"] and session[0]["sameSite"] == "Strict", cookies
    assert KEY not in session[0]["value"]

    # A patch submitted through the API appears and finishes on the open list page, which
    # is updated in place (the marker set on the window survives: no reload).
    page.evaluate("window.__noReload = 'still here'")
    status, accepted = api(
        "POST",
        "/v1/patches",
        {
            "id": "browser-1",
            "target": "MAIN",
            "description": "seen from the browser",
            "edits": [{"op": "write", "path": "browser.txt", "contents": "hello\n"}],
            "commands": ["echo browser-command-output"],
        },
    )
    assert status == 202, (status, accepted)
    row = page.locator('tr.patch[data-id="browser-1"]')
    expect(row).to_be_visible()
    expect(row).to_have_attribute("data-status", "succeeded")
    assert page.evaluate("window.__noReload") == "still here", "the list page was reloaded"
    shot(page, "02-list-finished")

    # Its detail page: timeline, report with the command's output, summary.
    row.locator("a.patch-link").click()
    expect(page).to_have_url(BASE + "/ui/patches/browser-1")
    expect(page.locator("h1.patch-title")).to_contain_text("browser-1")
    expect(page.locator("ol.timeline")).to_contain_text("succeeded")
    expect(page.locator("div.command pre.output")).to_contain_text("browser-command-output")
    expect(page.locator("pre.summary")).to_be_visible()
    shot(page, "03-detail")

    # The overview shows targets, the executor and the charts.
    page.goto(BASE + "/ui")
    expect(page.locator('tr[data-target="MAIN"]')).to_be_visible()
    expect(page.locator("svg.chart").first).to_be_visible()
    shot(page, "04-overview")

    # A patch for a target without an executor stays queued; it is cancelled from the UI.
    status, accepted = api(
        "POST",
        "/v1/patches",
        {
            "id": "browser-queued",
            "target": "CYOPS",
            "edits": [{"op": "write", "path": "never.txt", "contents": "x"}],
        },
    )
    assert status == 202, (status, accepted)
    page.goto(BASE + "/ui/patches/browser-queued")
    expect(page.locator("h1.patch-title .badge")).to_have_attribute("data-status", "queued")
    shot(page, "05-queued")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("text=Cancel patch")
    expect(page).to_have_url(BASE + "/ui/patches/browser-queued")
    expect(page.locator("h1.patch-title .badge")).to_have_attribute("data-status", "cancelled")
    status, detail = api("GET", "/v1/patches/browser-queued")
    assert detail["status"] == "cancelled", detail
    shot(page, "06-cancelled")

    # Logging out ends the session.
    page.click("header .logout button")
    expect(page).to_have_url(BASE + "/ui/login")
    page.goto(BASE + "/ui")
    expect(page).to_have_url(BASE + "/ui/login?next=%2Fui")
    browser.close()

print("ok", flush=True)
