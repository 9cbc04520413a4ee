"""Push demo jobs with the producer API and wait until the workers have handled them.

    python3 examples/push_demo.py -c config_example.toml [--count 10000]
"""
import argparse
import time

from ssjobs.producer import Producer

parser = argparse.ArgumentParser()
parser.add_argument("-c", "--config", default="config_example.toml")
parser.add_argument("--count", type=int, default=10_000)
args = parser.parse_args()

with Producer.from_config(args.config) as producer:
    started = time.time()
    producer.push_many("demo.echo", [{"n": i} for i in range(args.count)])
    producer.push("demo.report", {"sleep": 0.2})
    producer.push("demo.report", {"fail": True})          # retried twice, then dead-lettered
    producer.push("demo.echo", {"n": -1}, delay=2)          # runs 2 s from now
    print(f"pushed {args.count + 3} jobs in {time.time() - started:.2f}s")
    while producer.queue_size("demo.echo") or producer.queue_size("demo.report"):
        time.sleep(0.1)
    print(f"ready queues drained after {time.time() - started:.2f}s")
    time.sleep(3)  # let the delayed job and the retries run
