"""ssjobs.config: TOML → frozen dataclasses, every error at once, with key paths and lines."""
from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from ssjobs.config import (
    MAX_SOCKET_PATH_BYTES,
    SECTIONS,
    Config,
    embedded_url,
    key_lines,
    load_config,
    load_data_dir,
    specs,
)
from ssjobs.config import find_config_path as find
from ssjobs.configdoc import render_example, render_reference
from ssjobs.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config_example.toml"


def text(process: str = "", log: str = "", job: str = "", tail: str = "") -> str:
    """A valid config; each one-line insert lands on a known line: process 3, log 6, job 10,
    and ``tail`` from line 11 on."""
    return (f'[process]\ndata_dir = "data"\n{process}\n'
            f'[log]\ndir = "logs"\n{log}\n'
            f'[[jobs]]\ntopic = "a"\nconsumer = "m:f"\n{job}\n{tail}')


def write(tmp_path: Path, source: str, name: str = "ssjobs.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")
    return path


def errors(tmp_path: Path, source: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, source))
    return info.value.errors


# -- the shipped example ----------------------------------------------------------------------

def test_example_loads_as_shipped():
    cfg = load_config(EXAMPLE)
    assert [(j.topic, j.consumer) for j in cfg.jobs] == [("demo.echo", "demo:echo"),
                                                         ("demo.report", "demo:Report")]
    assert cfg.process.data_dir == ROOT / "data" / "process"
    assert cfg.log.dir == ROOT / "data" / "logs"
    assert cfg.process.consumer_path == (ROOT / "examples" / "consumers",)
    assert cfg.redis.url == f"unix://{ROOT}/data/process/redis/redis.sock"  # "embedded"
    assert cfg.redis.embedded and cfg.embedded_redis is cfg.redis
    assert cfg.notifier is None and cfg.metrics is None
    assert all(j.static_workers <= 2 for j in cfg.jobs)


def test_example_is_generated_from_the_declarations():
    assert EXAMPLE.read_text(encoding="utf-8") == render_example(), (
        "config_example.toml drifted from ssjobs/config.py; regenerate it with "
        "`python -m ssjobs.configdoc example > config_example.toml`")


def test_the_reference_key_tables_are_generated_from_the_declarations():
    from ssjobs.configdoc import REFERENCE_BEGIN, REFERENCE_END

    text = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    shown = text[text.index(REFERENCE_BEGIN):text.index(REFERENCE_END) + len(REFERENCE_END)]
    assert shown + "\n" == render_reference(), \
        "regenerate: python -m ssjobs.configdoc reference (into docs/reference.md)"


def _uncommented(source: str) -> str:
    return re.sub(r"(?m)^# (?=\[|[A-Za-z_]+ = )", "", source)


def test_example_shows_every_declared_key_in_its_table(tmp_path):
    doc = tomllib.loads(_uncommented(EXAMPLE.read_text(encoding="utf-8")))
    tables = {name: doc[name] for name in SECTIONS if name not in ("jobs", "periodic")}
    tables["periodic"] = doc["periodic"][0]
    tables["jobs"], tables["jobs.redis"] = doc["jobs"][0], doc["jobs"][0]["redis"]
    for name, table in tables.items():
        cls = SECTIONS["redis" if name == "jobs.redis" else name].cls
        declared = {s.key for s in specs(cls)} | ({"redis"} if name == "jobs" else set())
        assert set(table) == declared, name


def test_example_is_valid_with_every_optional_part_enabled(tmp_path):
    path = write(tmp_path, _uncommented(EXAMPLE.read_text(encoding="utf-8")))
    cfg = load_config(path)
    assert cfg.notifier.kind == "dingtalk" and cfg.notifier.params["token"] == "xxxx"
    assert cfg.metrics.address == ("127.0.0.1", 9108)
    assert cfg.log.handler_class == "mypkg.logs:MyLogHandler"
    assert cfg.jobs[0].redis is not None and cfg.jobs[1].redis is None


def test_every_setting_has_a_one_line_doc():
    for section in SECTIONS.values():
        for spec in specs(section.cls):
            assert spec.doc and "\n" not in spec.doc, spec.key


def test_demo_consumers(monkeypatch):
    spec = importlib.util.spec_from_file_location("demo", ROOT / "examples/consumers/demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    job = SimpleNamespace(id="j1", topic="demo.echo", payload={"sleep": 0}, attempts=0)
    demo.echo(job)
    demo.echo(SimpleNamespace(id="j2", payload=["not", "a", "dict"]))
    assert demo.echoed == 2
    report = demo.Report()
    report.setup()
    report.consume(job)
    with pytest.raises(ValueError, match="j9 asked to fail"):
        report.consume(SimpleNamespace(id="j9", payload={"fail": True}))
    report.teardown()
    assert (report.built, report.open) == (1, False)


# -- values and defaults ----------------------------------------------------------------------

def test_every_default(tmp_path):
    cfg = load_config(write(tmp_path, text()))
    assert dataclasses.asdict(cfg.process) == {
        "name": "ssjobs", "data_dir": tmp_path / "data", "user": "", "consumer_path": (),
        "stop_timeout": 30.0, "heartbeat_ttl": 30.0, "workdir": None}
    assert cfg.workdir == tmp_path  # the config file's directory
    assert dataclasses.asdict(cfg.log) == {
        "dir": tmp_path / "logs", "level": "info", "format": "text", "rotate": "", "keep": 14,
        "handler_class": None}
    assert (cfg.redis.url, cfg.redis.prefix) == ("redis://127.0.0.1:6379/0", "ssjobs")
    assert cfg.notifier is None and cfg.metrics is None
    assert dataclasses.asdict(cfg.jobs[0]) == {
        "topic": "a", "consumer": "m:f", "static_workers": 1, "dynamic_workers": 0,
        "queue_health_size": 100, "max_execute_time": 0.0, "max_consumer_count": 0,
        "dynamic_idle_time": 60.0, "job_timeout": 300.0, "max_retries": 3,
        "retry_backoff": 10.0, "max_memory_mb": 0, "batch_size": 100,
        "max_payload_bytes": 1048576, "concurrency_per_worker": 1, "rate_limit": "",
        "concurrency": 0, "track": False, "result_ttl": 86400.0, "redis": None}
    assert cfg.path == tmp_path / "ssjobs.toml"


def test_notifier_defaults_and_read_only_params(tmp_path):
    cfg = load_config(write(tmp_path, text(tail='[notifier]\nclass = "webhook"\n'
                                                '[notifier.params]\nurl = "https://x"\n')))
    n = cfg.notifier
    assert (n.kind, n.log_notify, n.jobs_check_notify) == ("webhook", True, True)
    assert (n.alert_after, n.repeat_interval) == (30.0, 600.0)
    assert dict(n.params) == {"url": "https://x"}
    with pytest.raises(TypeError):
        n.params["url"] = "https://evil"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.process.name = "other"  # type: ignore[misc]


def test_log_dir_dash_or_unset_means_stderr(tmp_path):
    dash = text().replace('dir = "logs"', 'dir = "-"')
    assert load_config(write(tmp_path, dash)).log.dir is None
    unset = text().replace('dir = "logs"\n', "")
    assert load_config(write(tmp_path, unset)).log.dir is None


def test_workdir_is_relative_to_the_config_file(tmp_path):
    cfg = load_config(write(tmp_path, text(process='workdir = "run/here"'), "etc/jobs.toml"))
    assert cfg.process.workdir == cfg.workdir == tmp_path / "etc" / "run" / "here"


def test_concurrency_per_worker_range(tmp_path):
    assert load_config(write(tmp_path, text(job="concurrency_per_worker = 50"))
                       ).jobs[0].concurrency_per_worker == 50
    assert errors(tmp_path, text(job="concurrency_per_worker = 0")) == [
        "jobs[0].concurrency_per_worker (line 10): must be between 1 and 1000, got 0"]


def notifier(kind: str, params: str = "") -> str:
    return text(tail=f'[notifier]\nclass = "{kind}"\n[notifier.params]\n{params}\n')


@pytest.mark.parametrize("source, expected", [
    (notifier("webhook"), 'notifier.params.url (line 13): required for class "webhook"'),
    (notifier("slack", 'prefix = "[p]"'),
     'notifier.params.url (line 13): required for class "slack"'),
    (notifier("feishu", 'url = ""'),
     'notifier.params.url (line 14): required for class "feishu"'),
    (notifier("dingtalk", 'secret = "s"'),
     'notifier.params (line 13): class "dingtalk" needs token or url (one of them)'),
    (notifier("wecom"), 'notifier.params (line 13): class "wecom" needs key or url (one of them)'),
    (notifier("wecom", 'key = "k"\nurl = "https://x"'),
     'notifier.params (line 13): class "wecom" takes key or url, not both'),
    (notifier("dingtalk", 'tokn = "t"\nurl = "https://x"'),
     'notifier.params.tokn (line 14): unknown key (did you mean "token"?)'),
    (notifier("webhook", 'url = "ftp://hooks.local/secret-token"'),
     'notifier.params.url (line 14): must be an http:// or https:// URL, got "ftp://hooks.local"'),
    (notifier("dingtalk", "token = 42"),
     "notifier.params.token (line 14): must be a string, got integer 42"),
    (notifier("webhook", 'url = "https://x"\nheaders = "Bearer t"'),
     'notifier.params.headers (line 15): must be a table of strings, got string "Bearer t"'),
    (text(tail='[notifier]\nclass = "slack"\n'),
     'notifier (line 11): required for class "slack"'),
])
def test_notifier_params_are_checked_per_channel(tmp_path, source, expected):
    found = errors(tmp_path, source)
    assert expected in found or expected.replace("notifier (", "notifier.params.url (") \
        in found, found


def test_notifier_params_that_are_fine(tmp_path):
    for source in (notifier("dingtalk", 'token = "t"\nsecret = "s"\nprefix = "[p]"'),
                   notifier("wecom", 'url = "https://qyapi.example/x"'),
                   notifier("webhook", 'url = "http://h/x"\nheaders = { Authorization = "t" }'),
                   notifier("mypkg.alerts:Pager", "anything = 1")):
        assert load_config(write(tmp_path, source)).notifier is not None


def test_the_params_table_matches_the_notifier_classes():
    """config.NOTIFIER_PARAMS is the one list; each class takes exactly those keywords."""
    import inspect

    from ssjobs.config import NOTIFIER_PARAMS
    from ssjobs.notify import BUILTIN, _import

    assert set(BUILTIN) == set(NOTIFIER_PARAMS)
    for kind, channel in NOTIFIER_PARAMS.items():
        params = inspect.signature(_import(BUILTIN[kind]).__init__).parameters
        assert set(params) - {"self", "timeout"} == set(channel.keys), kind
        required = {n for n, p in params.items() if p.default is inspect.Parameter.empty} - {"self"}
        assert required <= set(channel.need), kind


def test_integers_are_accepted_where_numbers_are_expected(tmp_path):
    cfg = load_config(write(tmp_path, text(process="stop_timeout = 5", job="job_timeout = 1.5")))
    assert cfg.process.stop_timeout == 5.0 and isinstance(cfg.process.stop_timeout, float)
    assert cfg.jobs[0].job_timeout == 1.5


@pytest.mark.parametrize("listen, extra, address", [
    ("0.0.0.0:9108", 'token = "s3cret-token"', ("0.0.0.0", 9108)),
    ("10.1.2.3:9108", "allow_public = true", ("10.1.2.3", 9108)),
    ("[::1]:9100", "", ("::1", 9100)), ("localhost:9100", "", ("localhost", 9100)),
    ("127.0.0.2:9100", "", ("127.0.0.2", 9100))])
def test_metrics_listen(tmp_path, listen, extra, address):
    cfg = load_config(write(tmp_path, text(tail=f'[metrics]\nlisten = "{listen}"\n{extra}\n')))
    assert cfg.metrics.address == address


@pytest.mark.parametrize("listen", ["0.0.0.0:9108", "[::]:9108", "metrics.example:9108",
                                    "192.168.1.5:9108"])
def test_a_public_metrics_listen_needs_a_token_or_allow_public(tmp_path, listen):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text(tail=f'[metrics]\nlisten = "{listen}"\n')))
    (line,) = e.value.errors
    assert line.startswith("metrics.listen (line ") and "not a loopback address" in line
    assert "metrics.token" in line and "allow_public" in line


def test_max_payload_bytes_is_a_jobs_key_with_a_range(tmp_path):
    cfg = load_config(write(tmp_path, text(job="max_payload_bytes = 65536")))
    assert cfg.jobs[0].max_payload_bytes == 65536
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text(job="max_payload_bytes = 10")))
    assert "jobs[0].max_payload_bytes" in e.value.errors[0] and "1024" in e.value.errors[0]


@pytest.mark.parametrize("rotate", ["", "daily", "100MB", "10KB", "1GB", "5000"])
def test_rotate_values(tmp_path, rotate):
    assert load_config(write(tmp_path, text(log=f'rotate = "{rotate}"'))).log.rotate == rotate


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://:pw@cache.example:6380",
                                 "unix:///run/redis.sock?db=2", "redis://localhost"])
def test_redis_urls_accepted(tmp_path, url):
    assert load_config(write(tmp_path, text(tail=f'[redis]\nurl = "{url}"\n'))).redis.url == url


def test_job_lookup_and_per_topic_redis(tmp_path):
    cfg = load_config(write(tmp_path, text(
        tail='[jobs.redis]\nurl = "redis://other:6379/1"\n'
             '[[jobs]]\ntopic = "b"\nconsumer = "pkg.mod:Cls"\n'
             '[redis]\nprefix = "app"\n')))
    a, b = cfg.job("a"), cfg.job("b")
    assert cfg.redis_for(a) == a.redis
    assert (a.redis.url, a.redis.prefix) == ("redis://other:6379/1", "app")  # prefix inherited
    assert cfg.redis_for(b) is cfg.redis
    with pytest.raises(KeyError):
        cfg.job("missing")
    assert isinstance(cfg, Config)


# -- url = "embedded" ------------------------------------------------------------------------

def test_embedded_means_the_socket_under_data_dir_for_every_table_that_names_it(tmp_path):
    cfg = load_config(write(tmp_path, text(
        tail='[jobs.redis]\nprefix = "own"\n'
             '[[jobs]]\ntopic = "b"\nconsumer = "m:f"\n'
             '[jobs.redis]\nurl = "redis://other:6379/1"\n'
             '[[jobs]]\ntopic = "c"\nconsumer = "m:f"\n'
             '[redis]\nurl = "embedded"\nembedded_port = 7001\n')))
    socket_url = f"unix://{tmp_path}/data/redis/redis.sock"
    assert embedded_url(tmp_path / "data") == socket_url
    assert (cfg.redis.url, cfg.redis.embedded, cfg.redis.embedded_port) == (
        socket_url, True, 7001)
    a, b, c = (cfg.redis_for(cfg.job(t)) for t in "abc")
    assert (a.url, a.prefix, a.embedded) == (socket_url, "own", True)  # inherited, resolved
    assert (b.url, b.embedded) == ("redis://other:6379/1", False)
    assert c is cfg.redis
    assert cfg.embedded_redis is cfg.redis


def test_embedded_in_one_topic_only(tmp_path):
    cfg = load_config(write(tmp_path, text(tail='[jobs.redis]\nurl = "embedded"\n')))
    assert cfg.redis.url == "redis://127.0.0.1:6379/0" and not cfg.redis.embedded
    assert cfg.embedded_redis is cfg.jobs[0].redis and cfg.jobs[0].redis.embedded


def test_no_embedded_server_without_embedded(tmp_path):
    assert load_config(write(tmp_path, text())).embedded_redis is None


def test_embedded_port_is_one_per_host(tmp_path):
    found = errors(tmp_path, text(tail='[jobs.redis]\nurl = "embedded"\nembedded_port = 7002\n'
                                       '[redis]\nurl = "embedded"\nembedded_port = 7001\n'))
    assert found == ["jobs[0].redis.embedded_port (line 13): the embedded redis-server is one "
                     "per host: its port is 7001 in [redis], got 7002"]
    found = errors(tmp_path, text(tail='[redis]\nurl = "embedded"\nembedded_port = 70000\n'))
    assert found == ["redis.embedded_port (line 13): must be between 0 and 65535, got 70000"]


def test_embedded_socket_path_too_long_for_a_unix_socket(tmp_path):
    deep = "d" * (MAX_SOCKET_PATH_BYTES - len(str(tmp_path)))
    found = errors(tmp_path, text(process="").replace('data_dir = "data"',
                                                      f'data_dir = "{deep}"')
                   + '[redis]\nurl = "embedded"\n')
    assert len(found) == 1 and found[0].startswith("redis.url (line 12): \"embedded\" puts "
                                                   f"its socket at {tmp_path}/{deep}/redis/")
    assert found[0].endswith("use a shorter process.data_dir")


# -- errors: key path, line number, message ---------------------------------------------------

@pytest.mark.parametrize("source, expected", [
    # wrong types, booleans are not numbers
    (text(job='static_workers = "2"'),
     'jobs[0].static_workers (line 10): must be an integer, got string "2"'),
    (text(job="max_retries = true"),
     "jobs[0].max_retries (line 10): must be an integer, got boolean true"),
    (text(job="job_timeout = false"),
     "jobs[0].job_timeout (line 10): must be a number, got boolean false"),
    (text(job="batch_size = 2.5"),
     "jobs[0].batch_size (line 10): must be an integer, got float 2.5"),
    (text(job="job_timeout = nan"),
     "jobs[0].job_timeout (line 10): must be a finite number, got nan"),
    (text(process='stop_timeout = "30"'),
     'process.stop_timeout (line 3): must be a number, got string "30"'),
    (text(tail="[notifier]\nclass = 1\n"),
     "notifier.class (line 12): must be a string, got integer 1"),
    (text(tail='[notifier]\nclass = "slack"\nlog_notify = 1\n'),
     "notifier.log_notify (line 13): must be true or false, got integer 1"),
    (text(process='consumer_path = ["ok", 3]'),
     "process.consumer_path[1] (line 3): must be a string, got integer 3"),
    (text(process="consumer_path = 5"),
     "process.consumer_path (line 3): must be a string or an array of strings, got integer 5"),
    # ranges and choices
    (text(job="batch_size = 0"), "jobs[0].batch_size (line 10): must be between 1 and 1000, got 0"),
    (text(job="retry_backoff = -0.5"), "jobs[0].retry_backoff (line 10): must be >= 0, got -0.5"),
    (text(tail='[[jobs]]\ntopic = "b"\nconsumer = "m:f"\nstatic_workers = 0\n'),
     "jobs[1].static_workers (line 14): must be between 1 and 1024, got 0"),
    (text(log='level = "verbose"'),
     'log.level (line 6): must be one of debug, info, warning, error, got "verbose"'),
    (text(log='rotate = "weekly"'),
     'log.rotate (line 6): must be "", "daily" or a size like "100MB", got "weekly"'),
    (text(log='rotate = "0MB"'),
     'log.rotate (line 6): must be "", "daily" or a size like "100MB", got "0MB"'),
    # unknown and missing keys
    (text(job="static_worker = 2"),
     'jobs[0].static_worker (line 10): unknown key (did you mean "static_workers"?)'),
    (text(tail="[databse]\nhost = 1\n"), "databse (line 11): unknown table"),
    (text(tail='[jobs.redis]\nurl = "redis://h"\npassword = "x"\n'),
     "jobs[0].redis.password (line 13): unknown key"),
    (text(tail='[[jobs]]\ntopic = "b"\n'), "jobs[1].consumer (line 11): required key is missing"),
    (text(tail="[metrics]\n"), "metrics.listen (line 11): required key is missing"),
    ('[log]\ndir = "l"\n[[jobs]]\ntopic = "a"\nconsumer = "m:f"\n',
     "process.data_dir: required key is missing"),
    ('debug = true\n' + text(), "debug (line 1): unknown key"),
    # syntax of topics, consumers, URLs, addresses, users
    (text(tail='[[jobs]]\ntopic = "a"\nconsumer = "m:g"\n'),
     'jobs[1].topic (line 12): duplicate topic "a" (also in jobs[0])'),
    (text(tail='[[jobs]]\ntopic = "b"\nconsumer = "mail.send"\n'),
     'jobs[1].consumer (line 13): must be "module:function" or "module:Class", got "mail.send"'),
    (text(tail='[[jobs]]\ntopic = "b"\nconsumer = "mail:class"\n'),
     'jobs[1].consumer (line 13): must be "module:function" or "module:Class", got "mail:class"'),
    (text(tail='[[jobs]]\ntopic = "a b"\nconsumer = "m:f"\n'),
     "jobs[1].topic (line 12): must be non-empty, without whitespace, '{' or '}', got \"a b\""),
    (text(tail='[[jobs]]\ntopic = "{a}"\nconsumer = "m:f"\n'),
     "jobs[1].topic (line 12): must be non-empty, without whitespace, '{' or '}', got \"{a}\""),
    (text(tail=f'[[jobs]]\ntopic = "{"é" * 33}"\nconsumer = "m:f"\n'),
     "jobs[1].topic (line 12): must be at most 64 bytes (UTF-8), got 66"),
    (text(tail='[redis]\nurl = "http://localhost:6379"\n'),
     "redis.url (line 12): must start with redis://, rediss://, unix://, redis+cluster:// or redis+sentinel://"),
    (text(tail='[redis]\nurl = "unix://"\n'),
     'redis.url (line 12): needs a socket path, e.g. "unix:///run/redis.sock"'),
    (text(tail='[redis]\nurl = "redis://:secret@:6379/0"\n'),
     'redis.url (line 12): needs a host (and port 1..65535), e.g. "redis://127.0.0.1:6379/0"'),
    (text(tail='[redis]\nurl = "redis://localhost/cache"\n'),
     "redis.url (line 12): database must be a number"),
    (text(tail='[redis]\nprefix = "a{b}"\n'),
     'redis.prefix (line 12): must be 1..64 characters, no space, { or }, got "a{b}"'),
    (text(job='redis = { url = "ftp://x" }'),
     "jobs[0].redis.url (line 10): must start with redis://, rediss://, unix://, "
     "redis+cluster:// or redis+sentinel://"),
    (text(tail='[metrics]\nlisten = "localhost"\n'),
     'metrics.listen (line 12): must be "host:port" (e.g. "127.0.0.1:9108"), got "localhost"'),
    (text(tail='[metrics]\nlisten = "localhost:70000"\n'),
     'metrics.listen (line 12): port must be between 1 and 65535, got "70000"'),
    (text(tail='[notifier]\nclass = "pager"\n'),
     'notifier.class (line 12): must be dingtalk, webhook, slack, feishu, wecom or '
     '"module:Class", got "pager"'),
    (text(log='class = "mypkg.logs"'),
     'log.class (line 6): must be "module:Class", got "mypkg.logs"'),
    (text(process='user = "www:"'),
     'process.user (line 3): must be "user" or "user:group", got "www:"'),
    (text(process='name = "my jobs"'),
     'process.name (line 3): must be 1..32 of A-Z a-z 0-9 . _ -, got "my jobs"'),
    (text(process='data_dir = ""').replace('data_dir = "data"\n', "", 1),
     "process.data_dir (line 2): must not be empty"),
    # tables of the wrong shape
    ('process = 3\n[log]\ndir = "l"\n[[jobs]]\ntopic = "a"\nconsumer = "m:f"\n',
     "process (line 1): must be a table, got integer 3"),
    ('[process]\ndata_dir = "d"\n[log]\ndir = "l"\njobs = []\n',
     "log.jobs (line 5): unknown key"),
    ('jobs = []\n[process]\ndata_dir = "d"\n[log]\ndir = "l"\n',
     "jobs (line 1): must be a non-empty array of tables ([[jobs]]), got an empty array"),
    ('[process]\ndata_dir = "d"\n[log]\ndir = "l"\n[jobs]\ntopic = "a"\n',
     "jobs (line 5): must be a non-empty array of tables ([[jobs]]), got table"),
    ('jobs = [1]\n[process]\ndata_dir = "d"\n[log]\ndir = "l"\n',
     "jobs[0] (line 1): must be a table, got integer 1"),
])
def test_each_kind_of_error_names_key_and_line(tmp_path, source, expected):
    assert expected in errors(tmp_path, source)


def test_a_config_without_jobs(tmp_path):
    assert errors(tmp_path, '[process]\ndata_dir = "d"\n[log]\ndir = "l"\n') == [
        "jobs: must be a non-empty array of tables ([[jobs]]), got nothing"]


def test_all_errors_are_reported_at_once_in_line_order(tmp_path):
    source = """\
[process]
user = "a b"
[log]
dir = "logs"
level = "loud"

[[jobs]]
topic = "t"
consumer = "x"
static_workers = true

[[jobs]]
topic = "t"
consumer = "m:f"
batch_size = 5000
colour = "red"

[metrics]
listen = "nowhere"
"""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, source))
    assert info.value.errors == [
        "process.data_dir (line 1): required key is missing",
        'process.user (line 2): must be "user" or "user:group", got "a b"',
        'log.level (line 5): must be one of debug, info, warning, error, got "loud"',
        'jobs[0].consumer (line 9): must be "module:function" or "module:Class", got "x"',
        "jobs[0].static_workers (line 10): must be an integer, got boolean true",
        'jobs[1].topic (line 13): duplicate topic "t" (also in jobs[0])',
        "jobs[1].batch_size (line 15): must be between 1 and 1000, got 5000",
        'jobs[1].colour (line 16): unknown key',
        'metrics.listen (line 19): must be "host:port" (e.g. "127.0.0.1:9108"), got "nowhere"',
    ]
    assert str(info.value).startswith(f"{tmp_path / 'ssjobs.toml'}: process.data_dir (line 1)")


def test_a_toml_syntax_error_is_one_error_with_its_position(tmp_path):
    found = errors(tmp_path, text(job="static_workers = "))
    assert len(found) == 1
    assert found[0].startswith("invalid TOML: ") and "line 10" in found[0]


def test_a_redis_password_is_never_echoed(tmp_path):
    (message,) = errors(tmp_path, text(tail='[redis]\nurl = "redis://:hunter2@h:0/0"\n'))
    assert "hunter2" not in message


def test_missing_file_has_a_hint(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert info.value.errors == [
        "config file not found (hint: pass -c PATH or set SSJOBS_CONFIG; "
        "start from config_example.toml)"]
    assert info.value.path == str(tmp_path / "nope.toml")


def test_a_directory_or_binary_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file: Is a directory"):
        load_config(tmp_path)
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe[process]")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(tmp_path / "bin.toml")


# -- paths ------------------------------------------------------------------------------------

def test_relative_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    path = write(tmp_path, text(process='consumer_path = ["cons", "~/lib", "/opt/c", "./a/../b"]')
                 .replace('dir = "logs"', 'dir = "../logs"'), name="conf/jobs.toml")
    cfg = load_config(Path("..") / "conf" / "jobs.toml")
    conf = tmp_path / "conf"
    assert cfg.path == path
    assert cfg.process.data_dir == conf / "data"
    assert cfg.log.dir == tmp_path / "logs"
    assert cfg.process.consumer_path == (conf / "cons", home / "lib", Path("/opt/c"), conf / "b")


def test_consumer_path_may_be_one_string(tmp_path):
    cfg = load_config(write(tmp_path, text(process='consumer_path = "consumers"')))
    assert cfg.process.consumer_path == (tmp_path / "consumers",)


def test_load_data_dir_ignores_the_rest_of_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    path = write(tmp_path, text(job="static_workers = 0", tail="[surprise]\n"), name="c/s.toml")
    with pytest.raises(ConfigError):
        load_config(path)
    assert load_data_dir(path) == tmp_path / "c" / "data"


@pytest.mark.parametrize("source, expected", [
    ('[log]\ndir = "x"\n', "process.data_dir: required key is missing"),
    ('[process]\nname = "x"\n', "process.data_dir (line 1): required key is missing"),
    ("[process]\ndata_dir = 3\n", "process.data_dir (line 2): must be a string, got integer 3"),
    ('[process\ndata_dir = "x"\n', "invalid TOML: "),
])
def test_load_data_dir_errors(tmp_path, source, expected):
    with pytest.raises(ConfigError) as info:
        load_data_dir(write(tmp_path, source))
    assert len(info.value.errors) == 1 and info.value.errors[0].startswith(expected)


def test_find_config_path_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SSJOBS_CONFIG", raising=False)
    assert find(None) == tmp_path / "ssjobs.toml"
    monkeypatch.setenv("SSJOBS_CONFIG", "/etc/ssjobs/env.toml")
    assert find(None) == Path("/etc/ssjobs/env.toml")
    assert find("cli.toml") == tmp_path / "cli.toml"
    monkeypatch.setenv("SSJOBS_CONFIG", "")
    assert find("") == tmp_path / "ssjobs.toml"


# -- the line scan ----------------------------------------------------------------------------

def test_key_lines_tracks_tables_arrays_and_skips_multiline_strings():
    source = """\
top = 1
[a]
note = '''
x = 2
'''
b.c = 3
[[jobs]]
topic = "t"
[[jobs]]
[jobs.redis]
url = "u"
"""
    assert key_lines(source) == {"top": 1, "a": 2, "a.note": 3, "a.b": 6, "a.b.c": 6,
                                 "jobs[0]": 7, "jobs[0].topic": 8, "jobs[1]": 9,
                                 "jobs[1].redis": 10, "jobs[1].redis.url": 11}


def test_key_lines_never_crashes_on_junk():
    assert isinstance(key_lines("[[[\n= =\n'''\n[a.\"b\n\x00"), dict)
