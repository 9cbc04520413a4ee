"""Through Redis Sentinel (`redis+sentinel://`): the producer, check, and a master that
drains a topic all find the current master via the Sentinel."""
import json
import subprocess
import sys

import pytest
from conftest import RECORD_IDS, Project, wait_for
from masters import MasterProc
from redis_server import SentinelServers

from ssjobs.broker import connect
from ssjobs.producer import Producer


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory):
    servers = SentinelServers(tmp_path_factory.mktemp("sentinel"))
    servers.start()
    yield servers
    servers.stop()


def test_a_master_drains_a_topic_found_through_sentinel(sentinel, tmp_path, monkeypatch):
    out = tmp_path / "out.txt"
    monkeypatch.setenv("SSJOBS_TEST_OUT", str(out))
    (tmp_path / "proj").mkdir()
    project = Project(tmp_path / "proj", sentinel.url)
    project.consumer("rec", RECORD_IDS)
    project.write_config([{"topic": "sent", "consumer": "rec:run", "static_workers": 2}])
    run = [sys.executable, "-m", "ssjobs"]
    done = subprocess.run([*run, "check", "-c", str(project.config)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    m = MasterProc(project.config, project.data_dir)
    try:
        m.start()
        with Producer.from_config(project.config) as p:
            ids = p.push_many("sent", list(range(500))) + [p.push("sent", 1)]
        wait_for(lambda: out.exists() and set(out.read_text().split()) >= set(ids),
                 timeout=30, what="all jobs handled through sentinel")
        # the jobs really went to the master the Sentinel names
        assert sentinel.master.client().hget("t:{sent}:stats", "processed") == b"501"
        done = subprocess.run([*run, "status", "--json", "-c", str(project.config)],
                              capture_output=True, text=True, timeout=60)
        assert json.loads(done.stdout)["topics"]["sent"]["processed"] == 501
        assert m.stop() == 0
    finally:
        m.kill_all()


def test_a_wrong_service_name_is_a_clear_check_failure(sentinel, tmp_path):
    (tmp_path / "proj").mkdir()
    project = Project(tmp_path / "proj", sentinel.url.replace("mymaster", "nosuch"))
    project.consumer("rec", RECORD_IDS)
    project.write_config([{"topic": "sent", "consumer": "rec:run"}])
    done = subprocess.run([sys.executable, "-m", "ssjobs", "check", "-c", str(project.config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout
    assert "nosuch" in done.stdout + done.stderr


def test_connect_parses_several_sentinels_and_a_password():
    client = connect("redis+sentinel://:secret@127.0.0.1:26380,127.0.0.2/svc/3")
    pool = client.connection_pool
    assert pool.service_name == "svc"
    assert pool.connection_kwargs["db"] == 3 and pool.connection_kwargs["password"] == "secret"
    kwargs = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    hosts = [(k["host"], k["port"]) for k in kwargs]
    assert hosts == [("127.0.0.1", 26380), ("127.0.0.2", 26379)]


def test_a_sentinel_that_requires_the_password_is_asked_with_it(tmp_path):
    # given a master and a Sentinel that both require a password
    servers = SentinelServers(tmp_path, password="s3nt1nel-pw")
    servers.start()
    try:
        # when ssjobs connects through the Sentinel with the password in the URL
        client = connect(servers.url)
        # then the Sentinel answers (it refuses a client without it) and the master too
        assert client.ping()
        sentinels = client.connection_pool.sentinel_manager.sentinels
        assert all(s.connection_pool.connection_kwargs["password"] == "s3nt1nel-pw"
                   for s in sentinels)
        client.close()
    finally:
        servers.stop()


def test_tls_in_a_sentinel_url_is_used_for_the_sentinels_too():
    client = connect("rediss+sentinel://:pw@127.0.0.1:26380/svc")
    pool = client.connection_pool
    sentinels = pool.sentinel_manager.sentinels
    assert all(s.connection_pool.connection_class.__name__ == "SSLConnection"
               for s in sentinels)
    assert pool.connection_class.__name__ == "SentinelManagedSSLConnection"
