"""Against a real 3-node Redis Cluster: every key of a topic shares one hash slot, so the
Lua scripts and BLMOVE run on one node; producer, worker, recovery and master all work."""
import time

import pytest
from conftest import RECORD_IDS, Project, wait_for
from masters import MasterProc
from redis_server import RedisClusterServers

from ssjobs import envelope
from ssjobs.broker import Broker, Outcomes, TopicKeys, connect
from ssjobs.producer import Producer
from ssjobs.scoreboard import BatchPosition


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    servers = RedisClusterServers(tmp_path_factory.mktemp("cluster"))
    try:
        servers.start()
    except Exception as exc:  # pragma: no cover - a machine whose redis lacks cluster mode
        servers.stop()
        pytest.fail(f"could not start a redis cluster: {exc}")
    yield servers
    servers.stop()


def test_topics_land_on_different_nodes_and_scripts_work_there(cluster):
    client = connect(cluster.url)
    slots = {client.keyslot(TopicKeys("c", t).ready) for t in ("a", "b", "c", "d", "e")}
    assert len(slots) > 1  # topics spread over the cluster
    for topic in ("a", "b", "c"):
        broker = Broker(client, "c", topic)
        with Producer(cluster.url, prefix="c") as p:
            ids = p.push_many(topic, list(range(5)))
            p.push(topic, 99, delay=0.01)
        time.sleep(0.02)
        broker.register_worker("w1")
        got = broker.settle("w1", 0, take=10).jobs
        assert [envelope.decode(r).id for r in got][:5] == ids
        assert broker.recover("w1", BatchPosition(1, 0, 1), max_retries=3) == (6, 0, 0)
        broker.register_worker("w2")
        more = broker.settle("w2", 0, take=10).jobs
        broker.settle("w2", 1, done=len(more), outcomes=Outcomes(processed=len(more)))
        assert broker.counts()["processed"] == 6


def test_master_and_workers_drain_a_topic_on_the_cluster(cluster, tmp_path, monkeypatch):
    out = tmp_path / "out.txt"
    monkeypatch.setenv("SSJOBS_TEST_OUT", str(out))
    (tmp_path / "proj").mkdir()
    project = Project(tmp_path / "proj", cluster.url)
    project.consumer("rec", RECORD_IDS)
    project.write_config([{"topic": "clustered", "consumer": "rec:run", "static_workers": 2},
                          {"topic": "other", "consumer": "rec:run"}])
    m = MasterProc(project.config, project.data_dir)
    try:
        m.start()
        with Producer.from_config(project.config) as p:
            ids = p.push_many("clustered", list(range(2000))) + p.push_many("other", [1, 2])
        wait_for(lambda: out.exists() and set(out.read_text().split()) >= set(ids),
                 timeout=30, what="all jobs handled on the cluster")
        assert m.stop() == 0
    finally:
        m.kill_all()


def test_check_and_status_against_the_cluster(cluster, tmp_path, monkeypatch):
    import json
    import subprocess
    import sys

    (tmp_path / "proj").mkdir()
    project = Project(tmp_path / "proj", cluster.url)
    project.consumer("rec", RECORD_IDS)
    project.write_config([{"topic": "st", "consumer": "rec:run"}])
    run = [sys.executable, "-m", "ssjobs"]
    done = subprocess.run([*run, "check", "-c", str(project.config)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "redis ok" in done.stdout
    out = tmp_path / "out.txt"
    monkeypatch.setenv("SSJOBS_TEST_OUT", str(out))
    m = MasterProc(project.config, project.data_dir)
    try:
        m.start()
        Producer(cluster.url, prefix="t").push_many("st", [1, 2, 3])
        wait_for(lambda: out.exists() and len(out.read_text().split()) == 3)
        done = subprocess.run([*run, "status", "--json", "-c", str(project.config)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        topic = json.loads(done.stdout)["topics"]["st"]
        assert (topic["processed"], topic["backlog"]) == (3, 0), topic
        assert m.stop() == 0
    finally:
        m.kill_all()


def test_a_tracked_topic_keeps_its_records_on_the_cluster(cluster):
    from ssjobs.broker import Rules
    from ssjobs.tracking import Records

    client = connect(cluster.url)
    broker = Broker(client, "c", "tracked", Rules(track=True, result_ttl=60))
    broker.publish_conf(True, 60)
    broker.register_worker("w1")
    with Producer(cluster.url, prefix="c") as p:
        first, second = p.push_many("tracked", [1, 2])
        assert p.status("tracked", first)["state"] == "queued"
        broker.settle("w1", 0, take=1)
        assert p.status("tracked", first)["state"] == "running"
        assert p.cancel("tracked", second) == "queued"
        records = Records(time.time(), time.time(), 60)
        records.ended("succeeded", first, 0, time.time(), {"n": 1}, None)
        broker.settle("w1", 1, done=1, take=1, outcomes=Outcomes(
            processed=1, records=records.records, expiry=records.expiry))
        done = p.status("tracked", first)
        assert done["state"] == "succeeded" and done["result"] == {"n": 1}
        assert p.status("tracked", second)["state"] == "cancelled"
        assert broker.client.llen(broker.keys.inflight("w1")) == 0   # dropped, never taken
