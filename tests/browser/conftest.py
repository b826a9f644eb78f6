"""One dashboard per browser test module, stopped after it (an open page keeps polling it):
`quantbench ui` in a subprocess on 127.0.0.1 at a free port, over an empty temporary store, behind
a login; Playwright drives Debian's chromium (never a browser Playwright downloads). Screenshots go
to $QUANTBENCH_ARTIFACTS (CI keeps them) or to a temporary directory whose path is printed."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import free_port, serving_ui

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
USER, PASSWORD = "tester", "not-a-secret-9"
START_TIMEOUT_S = 120  # importing torch, gradio and every adapter on a busy 2-core machine


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    path = Path(os.environ.get("QUANTBENCH_ARTIFACTS") or tmp_path_factory.mktemp("screenshots"))
    path.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser test screenshots: {path}")
    return path


@pytest.fixture(scope="module")
def ui_store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ui-store")


@pytest.fixture(scope="module")
def ui_url(ui_store: Path, tmp_path_factory) -> Iterator[str]:
    """The URL of a running `quantbench ui --auth USER:PASSWORD` over `ui_store`."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} missing: apt-get install chromium (make test does it as root)")
    args = ["--port", str(free_port()), "--store", str(ui_store), "--auth", f"{USER}:{PASSWORD}"]
    try:
        with serving_ui(args, dict(os.environ), START_TIMEOUT_S) as (url, log):
            yield url
    except RuntimeError as exc:  # it did not start: the reason is its own output
        pytest.fail(str(exc))
    (tmp_path_factory.getbasetemp() / "ui-server.log").write_text("".join(log))


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.is_file() or not shutil.which(str(CHROMIUM)):
        pytest.skip(f"{CHROMIUM} missing")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def requested_urls() -> list[str]:
    """Every URL the shared page requested, to check that it needs nothing from the internet."""
    return []


@pytest.fixture(scope="module")
def page(browser, ui_url: str, requested_urls: list[str]):
    """A page logged in to the dashboard, shared by a module's tests (one login, one page load)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    context.on("request", lambda request: requested_urls.append(request.url))
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(ui_url)
    page.locator("input[type=password]").wait_for()
    page.locator("input[type=text]").first.fill(USER)
    page.locator("input[type=password]").fill(PASSWORD)
    page.get_by_role("button", name="Login").click()
    page.locator("#rec-run").wait_for(timeout=60_000)  # the first tab's button: the app is up
    yield page
    context.close()
