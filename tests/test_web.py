"""The dashboard over plain HTTP: the JSON API, the pages' HTML, authentication, CSRF,
read-only mode, root_path, escaping; against a private Redis and, for the fleet, real masters.
(The same in a real browser: tests/test_web_browser.py.)"""
from __future__ import annotations

import dataclasses
import json
import re
import sys
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
    csrf_of,
    http,
    wait_record,
)

from ssjobs.broker import TopicKeys, node_key, nodes_key  # noqa: E402
from ssjobs.errors import ControlError  # noqa: E402
from ssjobs.producer import Producer  # noqa: E402
from ssjobs.web import auth, model  # noqa: E402
from ssjobs.web.server import build_server, settings  # noqa: E402

CONSUMERS = """
    import time
    def ok(job):
        time.sleep(0.005)
    def hold(job):
        time.sleep(30)
""" + TRACKED_CONSUMER
JOBS = [{"topic": "mail.send", "consumer": "demo:ok", "static_workers": 2}, TRACKED_TOPIC,
        {"topic": "video/encode", "consumer": "demo:hold"}]


@pytest.fixture
def site(project):
    project.consumer("demo", CONSUMERS)
    project.write_config(JOBS)
    return project


@pytest.fixture
def master(site):
    proc = MasterProc(site.config, site.data_dir)
    yield proc
    proc.kill_all()


def keys(topic: str) -> TopicKeys:
    return TopicKeys("t", topic)


# -- the overview and the fleet --------------------------------------------------------------

def test_overview_api_has_every_topic_and_this_hosts_workers_from_the_scoreboard(
        site, master, rclient):
    master.start()
    with Producer(site.redis_url, prefix="t") as p:
        p.push("video/encode", {"file": "a.mp4"})       # a worker busy with it for 30 s
    with Served(site.config) as web:
        def busy_worker():
            data = http("GET", web.url("/api/overview")).json()
            hosts = [h for h in data["hosts"] if h["this_host"]]
            workers = hosts[0]["workers"] if hosts else []
            return data if any(w["state"] == "busy" and w["job_id"] for w in workers) else None

        data = wait_for(busy_worker, 15, what="the busy worker on the overview")
    assert data["running"] is True and data["redis"] == "up"
    assert list(data["topics"]) == ["mail.send", "report.build", "video/encode"]
    assert data["topics"]["video/encode"]["inflight"] == 1
    assert len(data["topics"]["mail.send"]["history"]) == model.SPARK_MINUTES
    (host,) = data["hosts"]
    assert host["pid"] == master.pid and host["alive"] and host["node"].count(":") == 2
    assert sorted(w["topic"] for w in host["workers"]) == ["mail.send", "mail.send",
                                                          "report.build", "video/encode"]
    busy = next(w for w in host["workers"] if w["state"] == "busy")
    assert busy["topic"] == "video/encode" and busy["job_started_at"] <= time.time()
    assert isinstance(busy["rss_bytes"], int)   # measured between jobs: may still be 0


def test_the_heartbeat_carries_the_hosts_workers_and_other_hosts_are_shown_from_it(
        site, master, rclient):
    """What a master publishes is what another host's dashboard shows: here the dashboard
    of a host with no master of its own (another data_dir) sees this master's workers."""
    master.start()
    (node,) = [n.decode() for n in rclient.smembers(nodes_key("t"))]
    summary = wait_for(lambda: (s := json.loads(rclient.get(node_key("t", node))))
                       and len(s["workers"]) == 4 and s, 10, what="4 workers in the heartbeat")
    assert summary["pid"] == master.pid and summary["host"]
    assert set(summary["workers"][0]) == {"pid", "topic", "kind", "state", "job_id",
                                          "job_started_at", "rss_bytes", "processed"}
    # a host whose heartbeat expired stays listed until a master recovers it: shown as gone
    # (the running master recovers it within seconds: list it again before each look)
    dead = "deadhost:77:ffff"
    elsewhere = site.root / "elsewhere.toml"
    elsewhere.write_text(site.config.read_text().replace('"./data/process"', '"./other"'))

    def with_dead_host(path, sign):
        rclient.sadd(nodes_key("t"), dead)
        found = http("GET", web.url(path))
        return sign in found.text and found

    with Served(elsewhere) as web:
        data = wait_for(lambda: with_dead_host("/api/overview", dead), 10,
                        what="the dead host listed").json()
        page = wait_for(lambda: with_dead_host("/", ">gone<"), 10,
                        what="the dead host shown").text
    assert data["running"] is False
    hosts = {h["node"]: h for h in data["hosts"]}
    assert hosts[node]["alive"] and not hosts[node]["this_host"]
    assert sorted(w["pid"] for w in hosts[node]["workers"]) == sorted(
        w["pid"] for w in master.workers())
    assert hosts[dead]["alive"] is False
    assert "No master runs on this host" in page and ">gone<" in page
    for w in master.workers():
        assert f">{w['pid']}<" in page


def test_overview_counters_and_rates_follow_redis_while_no_master_runs(site, rclient):
    with Served(site.config) as web:
        first = http("GET", web.url("/api/overview")).json()
        assert first["topics"]["mail.send"]["backlog"] == 0
        with Producer(site.redis_url, prefix="t") as p:
            p.push_many("mail.send", [{"n": i} for i in range(7)])
        rclient.hincrby(keys("mail.send").stats, "processed", 30)
        data = wait_for(lambda: (d := http("GET", web.url("/api/overview")).json())
                        ["topics"]["mail.send"]["backlog"] == 7 and d, 5,
                        what="backlog 7 on /api/overview")
    assert data["topics"]["mail.send"]["processed"] == 30
    assert data["topics"]["mail.send"]["rate_1m"] > 0
    assert data["hosts"] == [] and data["running"] is False


# -- dead letters ----------------------------------------------------------------------------

def test_dead_letters_listed_shown_retried_and_purged_through_the_api(site, rclient):
    ids = [add_dead(rclient, "report.build", {"n": i}) for i in range(4)]
    with Served(site.config) as web:
        listed = http("GET", web.url("/api/topics/report.build/dead?limit=2")).json()
        assert listed["total"] == 4 and [e["id"] for e in listed["entries"]] == ids[::-1][:2]
        shown = http("GET", web.url(f"/api/topics/report.build/dead/{ids[0]}")).json()
        assert shown["error"]["traceback"].startswith("Traceback")
        assert json.loads(shown["payload"]) == {"n": 0}
        page = http("GET", web.url("/"))
        cookie = f"{auth.COOKIE}={page.cookie(auth.COOKIE)}"
        token = {"X-CSRF-Token": csrf_of(page.text)}
        one = http("POST", web.url("/api/topics/report.build/dead/retry"),
                   json={"ids": [ids[1]]}, headers=token, cookie=cookie)
        assert one.status == 200 and one.json() == {"requeued": 1, "gone": 0, "skipped": 0}
        assert rclient.llen(keys("report.build").ready) == 1
        purged = http("POST", web.url("/api/topics/report.build/dead/purge"),
                      json={"seen": 2}, headers=token, cookie=cookie)
        assert purged.json() == {"deleted": 2}
        assert rclient.llen(keys("report.build").dead) == 1   # the newest one is left
        rest = http("POST", web.url("/api/topics/report.build/dead/retry"), json={},
                    headers=token, cookie=cookie)
        assert rest.json()["requeued"] == 1 and rclient.llen(keys("report.build").dead) == 0
        gone = http("GET", web.url(f"/api/topics/report.build/dead/{ids[0]}"))
        assert gone.status == 404 and "no dead job" in gone.json()["error"]
        unknown = http("GET", web.url("/api/topics/nope/dead"))
        assert unknown.status == 404 and "unknown topic" in unknown.json()["error"]


def test_the_topic_page_buttons_retry_and_purge_with_a_form_post(site, rclient):
    ids = [add_dead(rclient, "video/encode", {"n": i}) for i in range(3)]
    with Served(site.config) as web:
        page = http("GET", web.url("/topics/video/encode"))
        cookie = f"{auth.COOKIE}={page.cookie(auth.COOKIE)}"
        csrf = csrf_of(page.text)
        assert page.text.count('name="id"') == 3 and 'id="purge"' in page.text
        in_forms = set(re.findall(r'name="csrf" value="([^"]*)"', page.text))
        assert in_forms == {csrf}                  # every form carries the page's token
        done = http("POST", web.url("/topics/video/encode/dead/retry"),
                    form={"csrf": csrf, "id": ids[2]}, cookie=cookie)
        assert done.status == 303
        assert done.header("location").startswith("/topics/video/encode?done=retried&n=1")
        after = http("GET", web.url(done.header("location")), cookie=cookie).text
        assert "Requeued 1 job." in after
        purged = http("POST", web.url("/topics/video/encode/dead/purge"),
                      form={"csrf": csrf, "seen": "2"}, cookie=cookie)
        assert purged.header("location").endswith("done=purged&n=2")
    assert rclient.llen(keys("video/encode").dead) == 0
    assert rclient.llen(keys("video/encode").ready) == 1


def test_a_post_without_its_csrf_token_is_refused_and_changes_nothing(site, rclient):
    job_id = add_dead(rclient, "report.build", {"n": 1})
    with Served(site.config) as web:
        page = http("GET", web.url("/topics/report.build"))
        cookie = f"{auth.COOKIE}={page.cookie(auth.COOKIE)}"
        attempts = [
            http("POST", web.url("/topics/report.build/dead/purge"), form={"seen": "1"},
                 cookie=cookie),                                   # no token
            http("POST", web.url("/topics/report.build/dead/purge"),
                 form={"seen": "1", "csrf": "forged"}, cookie=cookie),
            http("POST", web.url("/topics/report.build/dead/purge"),   # another session's
                 form={"seen": "1", "csrf": csrf_of(page.text)}),
            http("POST", web.url("/api/topics/report.build/dead/retry"), json={},
                 cookie=cookie),
        ]
    assert [a.status for a in attempts] == [403, 403, 403, 403]
    assert "CSRF" in attempts[0].text and "CSRF" in attempts[3].json()["error"]
    assert rclient.lrange(keys("report.build").dead, 0, -1) != []
    assert add_dead and job_id


# -- escaping --------------------------------------------------------------------------------

def test_script_in_a_payload_and_an_error_is_escaped_on_every_page(site, rclient):
    job_id = add_dead(rclient, "report.build", {"html": SCRIPT}, message=f"bad {SCRIPT}")
    rclient.sadd(nodes_key("t"), f"evil{SCRIPT}:1:x")
    rclient.set(node_key("t", f"evil{SCRIPT}:1:x"), json.dumps(
        {"host": SCRIPT, "workers": [{"pid": 1, "topic": SCRIPT, "state": SCRIPT,
                                      "job_id": SCRIPT}]}))
    with Served(site.config) as web:
        pages = [http("GET", web.url(p)).text for p in
                 ("/", "/topics/report.build", f"/topics/report.build/dead/{job_id}")]
    for page in pages:
        assert "<script>alert" not in page
        assert len(re.findall(r"<script\b", page)) == 1     # ours: <script src=app.js>
    assert "&lt;script&gt;alert(&#39;xss&#39;)&lt;/script&gt;" in pages[0]
    assert "&lt;script&gt;" in pages[1] and "&lt;script&gt;" in pages[2]


# -- authentication, read-only, root_path, listen ----------------------------------------------

def test_with_a_token_every_page_and_call_needs_it_and_the_login_sets_a_strict_cookie(
        site, rclient):
    add_dead(rclient, "report.build", {"n": 1})
    secret = "s3cret-token-for-tests"
    with Served(site.config, token=secret) as web:
        page = http("GET", web.url("/topics/report.build"))
        assert page.status == 303
        assert page.header("location") == "/login?next=%2Ftopics%2Freport.build"
        api = http("GET", web.url("/api/overview"))
        assert api.status == 401 and api.header("www-authenticate").startswith("Bearer")
        assert http("GET", web.url("/api/overview"),
                    headers={"Authorization": "Bearer wrong"}).status == 401
        ok = http("GET", web.url("/api/overview"), headers={"Authorization": f"Bearer {secret}"})
        assert ok.status == 200 and "report.build" in ok.json()["topics"]
        assert http("GET", web.url("/healthz")).status == 200        # for load balancers
        assert http("GET", web.url("/static/app.css")).status == 200
        started = time.monotonic()
        wrong = http("POST", web.url("/login"), form={"token": "nope", "next": "/"})
        assert wrong.status == 401 and time.monotonic() - started >= 0.9
        assert wrong.cookie(auth.COOKIE) is None
        login = http("POST", web.url("/login"),
                     form={"token": secret, "next": "/topics/report.build"})
        assert login.status == 303 and login.header("location") == "/topics/report.build"
        set_cookie = login.header("set-cookie")
        for attribute in ("HttpOnly", "SameSite=Strict", "Path=/"):
            assert attribute in set_cookie
        assert secret not in set_cookie
        cookie = f"{auth.COOKIE}={login.cookie(auth.COOKIE)}"
        inside = http("GET", web.url("/topics/report.build"), cookie=cookie)
        assert inside.status == 200 and "Log out" in inside.text
        # a bearer call needs no CSRF token (no browser sends that header by itself) ...
        assert http("POST", web.url("/api/topics/report.build/dead/purge"), json={},
                    headers={"Authorization": f"Bearer {secret}"}).json() == {"deleted": 1}
        # ... a cookie's does
        assert http("POST", web.url("/api/topics/report.build/dead/retry"), json={},
                    cookie=cookie).status == 403
        away = http("POST", web.url("/login"), form={"token": secret,
                                                     "next": "//evil.example/x"})
        assert away.header("location") == "/"


def test_read_only_hides_the_buttons_and_refuses_the_actions(site, rclient):
    job_id = add_dead(rclient, "report.build", {"n": 1})
    with Served(site.config, read_only=True) as web:
        page = http("GET", web.url("/topics/report.build"))
        dead_page = http("GET", web.url(f"/topics/report.build/dead/{job_id}")).text
        cookie = f"{auth.COOKIE}={page.cookie(auth.COOKIE)}"
        csrf = csrf_of(page.text)
        form = http("POST", web.url("/topics/report.build/dead/purge"),
                    form={"csrf": csrf, "seen": "1"}, cookie=cookie)
        api = http("POST", web.url("/api/topics/report.build/dead/retry"), json={},
                   headers={"X-CSRF-Token": csrf}, cookie=cookie)
        overview = http("GET", web.url("/api/overview")).json()
    for html in (page.text, dead_page):
        assert "<button" not in html.replace('<button class="link"', "")
        assert "/dead/retry" not in html and "/dead/purge" not in html
    assert "read-only" in page.text and overview["read_only"] is True
    assert form.status == 403 and "read-only" in form.text
    assert api.status == 403 and "read-only" in api.json()["error"]
    assert rclient.llen(keys("report.build").dead) == 1


def test_root_path_serves_prefixed_and_stripped_paths_and_every_link_carries_it(
        site, rclient):
    job_id = add_dead(rclient, "report.build", {"n": 1})
    with Served(site.config, root_path="/ssjobs/", token="tok-tok-tok") as web:
        bearer = {"Authorization": "Bearer tok-tok-tok"}
        prefixed = http("GET", f"{web.base}/ssjobs/topics/report.build", headers=bearer)
        stripped = http("GET", f"{web.base}/topics/report.build", headers=bearer)
        login = http("GET", f"{web.base}/ssjobs/")
        logged = http("POST", f"{web.base}/ssjobs/login", form={"token": "tok-tok-tok",
                                                               "next": "/"})
        css = http("GET", f"{web.base}/ssjobs/static/app.css")
    assert prefixed.status == stripped.status == 200
    assert f'href="/ssjobs/topics/report.build/dead/{job_id}"' in prefixed.text
    assert 'action="/ssjobs/topics/report.build/dead/retry"' in prefixed.text
    links = re.findall(r'(?:href|src|action)="(/[^"]*)"', prefixed.text)
    assert links and all(link.startswith("/ssjobs/") for link in links)
    assert login.header("location") == "/ssjobs/login?next=%2F"
    assert logged.header("location") == "/ssjobs/" and "Path=/ssjobs" in logged.header(
        "set-cookie")
    assert css.status == 200 and css.header("content-type").startswith("text/css")


def test_a_non_loopback_listen_address_without_a_token_is_refused(site, tmp_path):
    from ssjobs.config import WebConfig, load_config
    from ssjobs.errors import ConfigError

    cfg = load_config(site.config)
    for listen in ("0.0.0.0:9181", "10.1.2.3:80", "[::]:9181", "example.org:9181"):
        with pytest.raises(ControlError, match="not a loopback address"):
            settings(cfg, listen)
        with pytest.raises(ControlError, match="web.token"):
            build_server(cfg, WebConfig(listen=listen))
        settings(dataclasses.replace(cfg, web=WebConfig(token="a-token")), listen)
    for listen in ("127.0.0.1:9181", "localhost:80", "[::1]:9181", "127.0.0.9:1"):
        assert settings(cfg, listen).listen == listen
    with pytest.raises(ControlError, match="--listen port"):
        settings(cfg, "127.0.0.1:0")
    site.write_config(JOBS, extra='[web]\nlisten = "0.0.0.0:9181"\n')
    with pytest.raises(ConfigError) as refused:        # `ssjobs check` says so too
        load_config(site.config)
    assert any("web.listen" in e and "web.token" in e for e in refused.value.errors)


def test_pages_send_security_headers_and_load_nothing_from_elsewhere(site):
    web_dir = Path(__import__("ssjobs.web").web.__file__).parent
    for path in [*web_dir.glob("templates/*.html"), *web_dir.glob("static/*")]:
        assert not re.search(r"(?:src|href)=\"?(?:https?:)?//", path.read_text()), path
    with Served(site.config) as web:
        page = http("GET", web.url("/"))
        js = http("GET", web.url("/static/app.js"))
        again = http("GET", web.url("/static/app.js"),
                     headers={"If-None-Match": js.header("etag")})
        missing = http("GET", web.url("/static/nope.js"))
    csp = page.header("content-security-policy")
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.header("x-content-type-options") == "nosniff"
    assert page.header("cache-control") == "no-store"
    set_cookie = page.header("set-cookie")        # the anonymous session that anchors CSRF
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    assert js.status == 200 and "javascript" in js.header("content-type")
    assert again.status == 304 and missing.status == 404


def test_a_redis_that_is_down_gives_503_and_a_banner_not_a_crash(site, redis_server):
    with Served(site.config) as web:
        redis_server.stop()
        try:
            data = wait_for(lambda: (d := http("GET", web.url("/api/overview")).json())
                            .get("redis_error") and d, 10, what="redis_error")
            page = http("GET", web.url("/"))
            topic = http("GET", web.url("/api/topics/mail.send"))
        finally:
            redis_server.start(redis_server.port)
    assert data["redis"] == "down" and "redis://127.0.0.1" in data["redis_error"]
    assert page.status == 200 and "Redis is unreachable" in page.text
    assert topic.status == 503 and "redis" in topic.json()["error"]


# -- tracked jobs and periodic schedules ---------------------------------------------------------

def test_a_job_of_a_topic_that_does_not_track_is_not_found_and_the_page_says_why(site):
    with Served(site.config) as web:
        page = http("GET", web.url("/jobs/mail.send/abc123"))
        api = http("GET", web.url("/api/jobs/mail.send/abc123"))
        lookup = http("GET", web.url("/jobs?topic=video/encode&id=x1"))
    assert page.status == 404 and 'id="job-missing"' in page.text
    assert "does not track its jobs" in page.text
    assert api.status == 404 and "abc123" in api.json()["error"]
    assert lookup.status == 303 and lookup.header("location") == "/jobs/video/encode/x1"


def test_a_tracked_job_shows_state_result_progress_and_can_be_cancelled(site, master):
    master.start()
    with Producer.from_config(site.config) as p:
        done_id = p.push("report.build", {"n": 1})
        wait_record(p, done_id, lambda r: r["state"] == "succeeded", "the first job")
        job_id = p.push("report.build", {"hold": True})
        wait_record(p, job_id, lambda r: r["progress"], "progress of the running job")
        with Served(site.config) as web:
            page = http("GET", web.url(f"/jobs/report.build/{job_id}"))
            done = http("GET", web.url(f"/jobs/report.build/{done_id}")).text
            api = http("GET", web.url(f"/api/jobs/report.build/{job_id}")).json()
            unknown = http("GET", web.url("/jobs/report.build/zz"))
            cookie = f"{auth.COOKIE}={page.cookie(auth.COOKIE)}"
            cancel = http("POST", web.url(f"/jobs/report.build/{job_id}/cancel"),
                          form={"csrf": csrf_of(page.text)}, cookie=cookie)
            after = http("GET", web.url(cancel.header("location")), cookie=cookie).text
        stopped = wait_record(p, job_id, lambda r: r["state"] == "cancelled", "the cancel")
    assert 'id="job-state">running<' in page.text and "40%" in page.text
    assert "rows 4000/10000" in page.text and 'id="cancel"' in page.text
    assert "<script>alert" not in done and "&lt;script&gt;" in done   # the result, escaped
    assert 'id="cancel"' not in done                 # finished: nothing to cancel
    assert api["record"]["state"] == "running" and api["record"]["progress"]["fraction"] == 0.4
    assert unknown.status == 404 and 'id="job-missing"' in unknown.text
    assert "asked to stop" in after and stopped["finished_at"] is not None


def test_the_periodic_page_lists_schedules_or_says_they_are_not_enabled(site, monkeypatch):
    with Served(site.config) as web:
        off = http("GET", web.url("/periodic")).text
        assert http("GET", web.url("/api/periodic")).json() == {"periodic": None}
    assert 'id="periodic-off"' in off
    now = time.time()
    schedules = [{"topic": "report.build", "schedule": "0 8 * * 1-5", "next_run_at": now + 60,
                  "last_run_at": None}]
    real = model.collect_status
    monkeypatch.setattr(model, "collect_status",
                        lambda *a, **k: {**real(*a, **k), "periodic": schedules})
    with Served(site.config) as web:
        page = http("GET", web.url("/periodic")).text
        api = http("GET", web.url("/api/periodic")).json()
    assert "0 8 * * 1-5" in page and 'href="/topics/report.build"' in page
    assert api == {"periodic": schedules}


# -- the parts, alone ------------------------------------------------------------------------

def test_history_gives_jobs_per_second_per_minute_and_survives_a_counter_reset():
    history = model.History(minutes=3)
    for second in range(0, 181, 2):
        history.add(1000.0 + second, {"a": second * 5, "b": None})
    assert history.per_minute("a", 1180.0) == [5.0, 5.0, 5.0]
    assert history.per_minute("b", 1180.0) == [None, None, None]
    young = model.History(minutes=3)
    young.add(0.0, {"a": 0})
    young.add(10.0, {"a": 20})
    assert young.per_minute("a", 10.0) == [None, None, 2.0]
    young.add(12.0, {"a": 3})                      # Redis lost its data: start again
    assert young.per_minute("a", 12.0) == [None, None, None]


def test_session_cookies_and_csrf_tokens_cannot_be_forged_or_reused_elsewhere():
    guard = auth.Guard("the-token")
    cookie = guard.new_cookie()
    session = guard.session(cookie)
    assert session is not None
    nonce, expires, mac = cookie.split(".")
    assert guard.session(f"{nonce}.{int(expires) + 999}.{mac}") is None   # longer life
    assert guard.session(f"other.{expires}.{mac}") is None
    assert guard.session(cookie, now=int(expires) + 1) is None            # expired
    assert auth.Guard("another-token").session(cookie) is None           # token changed
    assert guard.csrf_ok(session, guard.csrf_token(session))
    other = guard.session(guard.new_cookie())
    assert not guard.csrf_ok(other, guard.csrf_token(session))
    assert not guard.csrf_ok(None, guard.csrf_token(session))
    assert guard.bearer_ok("Bearer the-token") and not guard.bearer_ok("Basic the-token")
    assert not auth.Guard("").bearer_ok("Bearer ")


# -- the command ---------------------------------------------------------------------------

def test_ssjobs_web_serves_until_sigterm_and_refuses_a_public_address_without_a_token(
        site, procs):
    import signal
    import subprocess

    from redis_server import free_port

    refused = subprocess.run([sys.executable, "-m", "ssjobs", "web", "-c", str(site.config),
                              "--listen", "0.0.0.0:9181"], capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 1 and "not a loopback address" in refused.stderr
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ssjobs", "web", "-c", str(site.config),
                             "--listen", f"127.0.0.1:{port}"], stderr=subprocess.PIPE,
                            text=True)
    procs.append(proc)

    def answers():
        try:
            return http("GET", f"http://127.0.0.1:{port}/api/overview")
        except OSError:
            return None

    reply = wait_for(answers, 30, what="ssjobs web answering")
    assert reply.status == 200 and "mail.send" in reply.json()["topics"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert f"dashboard on http://127.0.0.1:{port}/" in proc.stderr.read()
