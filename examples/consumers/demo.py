"""Demo consumers used by config_example.toml: ``demo:echo`` (a function) and
``demo:Report`` (a class).

Both accept a payload like ``{"sleep": 0.2}`` (seconds to pretend to work) and fail with
``{"fail": true}`` so retries and dead letters can be watched::

    ssjobs push demo.echo '{"sleep": 0.1}' -c config_example.toml
    ssjobs push demo.report '{"fail": true}' -c config_example.toml   # retried, then dead
"""
import time

echoed = 0  # jobs echo() handled in this worker process


def _work(job):
    payload = job.payload if isinstance(job.payload, dict) else {}
    if payload.get("fail"):
        raise ValueError(f"job {job.id} asked to fail")
    time.sleep(float(payload.get("sleep", 0)))


def echo(job):
    """Function consumer: called once per job."""
    global echoed
    _work(job)
    echoed += 1


class Report:
    """Class consumer: one instance per worker process."""

    def setup(self):
        self.built = 0
        self.open = True

    def consume(self, job):
        _work(job)
        self.built += 1

    def teardown(self):
        self.open = False
