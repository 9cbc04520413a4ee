"""The no-op consumer the benchmarks run."""


def noop(job):
    return None


def sleepy(job):
    import time
    time.sleep(job.payload)


_out = None


def stamp(job):
    """Record pickup latency (seconds since the producer built the envelope)."""
    global _out
    import os
    import time
    lat = time.time() - job.enqueued_at
    if _out is None:
        _out = os.open(os.environ["SSJOBS_BENCH_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(_out, f"{lat:.6f}\n".encode())


def sleepy_pid(job):
    """Sleep job.payload seconds and record which worker ran the job."""
    global _out
    import os
    import time
    time.sleep(job.payload)
    if _out is None:
        _out = os.open(os.environ["SSJOBS_BENCH_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(_out, f"{os.getpid()}\n".encode())
