"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium (never a
downloaded browser). Each test leaves its screenshots (1280×800 and a 390 px phone, light
and dark) in its tmp dir, under screens/.

Skipped when /usr/bin/chromium or /usr/bin/chromedriver is missing
(``apt-get install -y chromium chromium-driver``; .ci/run installs them)."""
from __future__ import annotations

import base64
import os
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the web extra is not installed: pip install '.[web]'")

from conftest import wait_for  # noqa: E402
from masters import MasterProc  # noqa: E402
from webtools import (  # noqa: E402
    SCRIPT,
    TRACKED_CONSUMER,
    TRACKED_TOPIC,
    Served,
    add_dead,
    wait_record,
)

from ssjobs.broker import TopicKeys  # noqa: E402
from ssjobs.producer import Producer  # noqa: E402

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  "--disable-extensions", "--disable-default-apps")
SIZES = ((1280, 800), (390, 844))
CONSUMERS = """
    import time
    def ok(job):
        time.sleep(0.005)
    def hold(job):
        time.sleep(30)
""" + TRACKED_CONSUMER
JOBS = [{"topic": "mail.send", "consumer": "demo:ok", "static_workers": 2}, TRACKED_TOPIC,
        {"topic": "video/encode", "consumer": "demo:hold"}]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(f"no {' or '.join(missing)}: the browser tests need Debian's chromium "
                    "and chromium-driver (apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path_factory.mktemp("profile"))
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1280,800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


class Page:
    """The browser, set to a 1280×800 light screen, with screenshots into tmp_path."""

    def __init__(self, driver, tmp_path: Path) -> None:
        self.driver = driver
        self.screens = tmp_path / "screens"
        self.screens.mkdir()
        driver.delete_all_cookies()
        self.size(1280, 800)
        self.scheme("light")

    def size(self, width: int, height: int) -> None:
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 500})

    def scheme(self, scheme: str) -> None:
        self.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {
            "features": [{"name": "prefers-color-scheme", "value": scheme}]})

    def css(self, selector: str):
        return self.driver.find_element("css selector", selector)

    def all(self, selector: str) -> list:
        return self.driver.find_elements("css selector", selector)

    def text(self, selector: str) -> str:
        """The element's rendered text, read at once (the live refresh swaps elements)."""
        return self.js("const e = document.querySelector(arguments[0]);"
                       "return e ? e.innerText.trim() : '';", selector)

    def click(self, selector: str) -> None:
        """Click, again if the live refresh swapped the element under us."""
        from selenium.common.exceptions import StaleElementReferenceException

        for _ in range(5):
            try:
                self.css(selector).click()
                return
            except StaleElementReferenceException:
                time.sleep(0.05)
        self.css(selector).click()

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def shots(self, name: str) -> list[Path]:
        """The page now, at each size in light and dark; the phone's whole page."""
        taken = []
        for width, height in SIZES:
            self.size(width, height)
            for scheme in ("light", "dark"):
                self.scheme(scheme)
                time.sleep(0.05)
                full = int(self.js("return document.documentElement.scrollHeight"))
                shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
                    "format": "png", "captureBeyondViewport": width < 500,
                    "clip": {"x": 0, "y": 0, "width": width, "scale": 1,
                             "height": max(height, full) if width < 500 else height}})
                path = self.screens / f"{name}-{width}-{scheme}.png"
                path.write_bytes(base64.b64decode(shot["data"]))
                taken.append(path)
        self.size(1280, 800)
        self.scheme("light")
        return taken

    def accept_confirm(self) -> str:
        alert = wait_for(lambda: _alert(self.driver), 5, what="the confirm dialog")
        question = alert.text
        alert.accept()
        return question


def _alert(driver):
    from selenium.common.exceptions import NoAlertPresentException

    try:
        return driver.switch_to.alert
    except NoAlertPresentException:
        return None


@pytest.fixture
def page(browser, tmp_path):
    return Page(browser, tmp_path)


@pytest.fixture
def site(project):
    project.consumer("demo", CONSUMERS)
    project.write_config(JOBS)
    return project


def test_the_overview_shows_every_topic_and_host_and_updates_without_a_reload(
        site, page, rclient):
    master = MasterProc(site.config, site.data_dir)
    try:
        master.start()
        with Producer(site.redis_url, prefix="t") as p:
            p.push("video/encode", {"file": "a.mp4"})
            p.push_many("mail.send", [{"n": i} for i in range(300)])
        add_dead(rclient, "report.build", {"n": 1})
        with Served(site.config) as web:
            page.driver.get(web.url("/"))
            assert [r.get_attribute("data-topic") for r in page.all("tr[data-topic]")] == [
                "mail.send", "report.build", "video/encode"]
            page.js("window.notReloaded = 'yes'")
            with Producer(site.redis_url, prefix="t") as p:
                for i in range(5):
                    p.push("mail.send", {"later": i}, delay=3600)
            cell = 'tr[data-topic="mail.send"] [data-field="delayed"]'
            wait_for(lambda: page.text(cell) == "5", 10, what="delayed 5 without a reload")
            assert page.js("return window.notReloaded") == "yes"
            wait_for(lambda: "busy" in page.text("#hosts"), 10, what="the busy worker")
            assert page.text('tr[data-topic="report.build"] [data-field="dead"]') == "1"
            assert "this host" in page.text("#hosts") and "alive" in page.text("#hosts")
            page.shots("overview")
            page.click('tr[data-topic="video/encode"] td.name a')
            wait_for(lambda: page.driver.current_url.endswith("/topics/video/encode"), 5)
            assert "busy" in page.text("#workers")
            page.shots("topic-with-worker")
    finally:
        master.kill_all()


def test_dead_letters_are_retried_and_purged_through_the_buttons(site, page, rclient):
    k = TopicKeys("t", "report.build")
    ids = [add_dead(rclient, "report.build", {"n": i, "html": SCRIPT},
                    message=f"boom {i}: {SCRIPT}") for i in range(3)]
    with Served(site.config) as web:
        page.driver.get(web.url("/topics/report.build"))
        assert len(page.all("li.dead-entry")) == 3
        page.shots("dead-letters")
        page.click(f'li.dead-entry[data-id="{ids[0]}"] button')
        wait_for(lambda: "Requeued 1 job." in page.text("#flash"), 5, what="the retry")
        assert rclient.llen(k.ready) == 1 and rclient.llen(k.dead) == 2
        assert len(page.all("li.dead-entry")) == 2
        page.click("#retry-all")
        assert "Requeue every dead job" in page.accept_confirm()
        wait_for(lambda: "Requeued 2 jobs." in page.text("#flash"), 5, what="retry all")
        assert rclient.llen(k.ready) == 3 and rclient.llen(k.dead) == 0
        assert "No dead letters." in page.text("#dead")
        for i in range(2):
            add_dead(rclient, "report.build", {"again": i})
        page.driver.get(web.url("/topics/report.build"))
        page.click("#purge")
        page.driver.switch_to.alert.dismiss()             # a second thought: nothing deleted
        assert rclient.llen(k.dead) == 2
        page.click("#purge")
        assert "Delete 2 dead jobs" in page.accept_confirm()
        wait_for(lambda: "Deleted 2 dead jobs." in page.text("#flash"), 5, what="the purge")
        assert rclient.llen(k.dead) == 0
        page.shots("after-purge")


def test_script_in_a_payload_is_shown_as_text(site, page, rclient):
    job_id = add_dead(rclient, "report.build", {"html": SCRIPT}, message=f"bad {SCRIPT}")
    with Served(site.config) as web:
        for path in ("/topics/report.build", f"/topics/report.build/dead/{job_id}"):
            page.driver.get(web.url(path))
            assert _alert(page.driver) is None
            assert page.js("return document.scripts.length") == 1
            assert SCRIPT in page.css("main").text
        assert SCRIPT in page.text("#payload") and SCRIPT in page.text("#traceback")
        page.shots("dead-letter")


def test_logging_in_with_the_token(site, page, rclient):
    with Served(site.config, token="correct-horse-battery") as web:
        page.driver.get(web.url("/topics/report.build"))
        assert "/login?next=" in page.driver.current_url
        page.shots("login")
        page.css('input[name="token"]').send_keys("wrong-token")
        page.click('form.login button')
        wait_for(lambda: "Wrong token." in page.text(".login"), 5, what="the refusal")
        page.css('input[name="token"]').send_keys("correct-horse-battery")
        page.click('form.login button')
        wait_for(lambda: page.driver.current_url.endswith("/topics/report.build"), 5,
                 what="back at the topic after logging in")
        assert "ssjobs_session" not in page.js("return document.cookie")   # HttpOnly
        page.driver.get(web.url("/"))
        assert page.all("tr[data-topic]")
        page.click("form.inline button.link")          # log out
        wait_for(lambda: "/login" in page.driver.current_url, 5, what="logged out")
        page.driver.get(web.url("/"))
        assert "/login" in page.driver.current_url


def test_read_only_mode_hides_the_actions_and_refuses_them(site, page, rclient):
    job_id = add_dead(rclient, "report.build", {"n": 1})
    with Served(site.config, read_only=True) as web:
        page.driver.get(web.url(f"/topics/report.build/dead/{job_id}"))
        assert page.all("main button") == []
        page.driver.get(web.url("/topics/report.build"))
        assert page.all("main button") == [] and page.all("main form") == []
        assert page.text(".bar .badge") == "read-only"
        status = page.driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const csrf = document.querySelector('meta[name="csrf"]').content;
            fetch('/api/topics/report.build/dead/purge', {method: 'POST', body: '{}',
                  headers: {'X-CSRF-Token': csrf}}).then(r => done(r.status));""")
        assert status == 403
        page.shots("read-only")
    assert rclient.llen(TopicKeys("t", "report.build").dead) == 1


def test_a_post_without_the_csrf_token_is_refused(site, page, rclient):
    add_dead(rclient, "report.build", {"n": 1})
    with Served(site.config) as web:
        page.driver.get(web.url("/topics/report.build"))
        status = page.driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch('/api/topics/report.build/dead/purge', {method: 'POST', body: '{}'})
              .then(r => done(r.status));""")
        assert status == 403
        page.js("""
            const form = document.createElement('form');
            form.method = 'post';
            form.action = '/topics/report.build/dead/purge';
            form.innerHTML = '<input name="seen" value="1">';
            document.body.appendChild(form);
            HTMLFormElement.prototype.submit.call(form);""")
        wait_for(lambda: "CSRF" in page.text("#error"), 5, what="the refusal page")
    assert rclient.llen(TopicKeys("t", "report.build").dead) == 1


def test_root_path_behind_a_reverse_proxy(site, page, rclient):
    add_dead(rclient, "report.build", {"n": 1})
    with Served(site.config, root_path="/ssjobs") as web:
        page.driver.get(web.base + "/ssjobs/")
        assert page.js("return getComputedStyle(document.querySelector('.bar')).position") \
            == "sticky"                                       # the stylesheet loaded
        page.click('tr[data-topic="report.build"] td.name a')
        wait_for(lambda: page.driver.current_url == web.base + "/ssjobs/topics/report.build",
                 5, what="the topic under /ssjobs")
        page.click("li.dead-entry button")
        wait_for(lambda: "Requeued 1 job." in page.text("#flash"), 5, what="the retry")
        assert page.driver.current_url.startswith(web.base + "/ssjobs/topics/report.build")


def test_the_job_page_finds_a_tracked_job_shows_its_progress_and_cancels_it(site, page):
    master = MasterProc(site.config, site.data_dir)
    try:
        master.start()
        with Producer.from_config(site.config) as p, Served(site.config) as web:
            page.driver.get(web.url("/jobs"))
            page.css('input[name="id"]').send_keys("0123abcd")
            page.click("form.lookup button")
            wait_for(lambda: page.all("#job-missing"), 5, what="an unknown job")
            assert page.driver.current_url.endswith("/jobs/mail.send/0123abcd")
            done_id = p.push("report.build", {"n": 1})
            wait_record(p, done_id, lambda r: r["state"] == "succeeded", "the first job")
            page.driver.get(web.url(f"/jobs/report.build/{done_id}"))
            assert page.text("#job-state") == "succeeded"
            assert SCRIPT in page.text("#result")          # shown as text, not run
            job_id = p.push("report.build", {"hold": True})
            wait_record(p, job_id, lambda r: r["progress"], "progress of the running job")
            page.driver.get(web.url(f"/jobs/report.build/{job_id}"))
            assert page.text("#job-state") == "running"
            assert page.css("progress").get_attribute("value") == "0.4"
            page.shots("job")
            page.click("#cancel")
            page.accept_confirm()
            wait_for(lambda: "asked to stop" in page.text("#flash"), 5, what="the cancel")
            wait_record(p, job_id, lambda r: r["state"] == "cancelled", "the job cancelled")
            wait_for(lambda: page.text("#job-state") == "cancelled", 10,
                     what="the page showing it cancelled")
    finally:
        master.kill_all()
