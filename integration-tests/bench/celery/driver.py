"""Sends N ``tasks.upper`` tasks to the Celery worker and times every result.

Run by the broker-bench harness; by hand (with a worker started as in
``tasks.py``, and the same ``KILN_BENCH_*`` environment)::

    python driver.py --jobs 2000 --size 200 --reply-queue kiln-bench-r --tag t1

The main thread sends the tasks with ``apply_async`` (Celery's own
publisher, as a user would), each with ``reply_to`` set to a reply queue of
this run: the worker's ``rpc://`` backend publishes each result there, with
the task id as correlation id. A second thread, with a connection of its
own, consumes that queue and stamps each result as it arrives, so a
latency is "result received - apply_async called", not "when .get() got
round to it". Every result is checked (state SUCCESS, the input
upper-cased).

The last line on stdout is one JSON object: received, errors, duplicates,
seconds (first send to last result), publish_seconds, latencies_us, notes.
"""

import argparse
import json
import sys
import threading
import time

from kombu import Connection, Consumer, Queue

import tasks

FILLER = "the quick brown fox jumps over the lazy dog "


def job_input(i, size):
    """The same input as the Rust harness's Workload::input."""
    text = f"job {i:08} "
    while len(text) < size:
        text += FILLER
    return text[:size]


class Collector(threading.Thread):
    def __init__(self, reply_queue, tag, n, size, stall, deadline):
        super().__init__(daemon=True)
        self.reply_queue = reply_queue
        self.prefix = tag + "-"
        self.n = n
        self.size = size
        self.stall = stall
        self.deadline = deadline
        self.sent_ns = [0] * n
        self.latencies_us = []
        self.seen = bytearray(n)
        self.received = 0
        self.errors = 0
        self.duplicates = 0
        self.foreign = 0
        self.last_ns = 0
        self.notes = []
        self.ready = threading.Event()
        self.stop = threading.Event()

    def on_message(self, body, message):
        now = time.monotonic_ns()
        cid = message.properties.get("correlation_id") or ""
        if not cid.startswith(self.prefix):
            self.foreign += 1
            return
        try:
            i = int(cid[len(self.prefix):])
        except ValueError:
            self.foreign += 1
            return
        if not 0 <= i < self.n:
            self.foreign += 1
            return
        if self.seen[i]:
            self.duplicates += 1
            return
        self.seen[i] = 1
        self.received += 1
        self.last_ns = now
        self.latencies_us.append((now - self.sent_ns[i]) // 1000)
        ok = (
            isinstance(body, dict)
            and body.get("status") == "SUCCESS"
            and body.get("result") == job_input(i, self.size).upper()
        )
        if not ok:
            self.errors += 1
            if self.errors == 1:
                self.notes.append(f"first wrong result: {cid}: {str(body)[:300]}")

    def run(self):
        try:
            with Connection(tasks.BROKER) as conn:
                queue = Queue(self.reply_queue, durable=True, auto_delete=False)
                with Consumer(
                    conn,
                    queues=[queue],
                    callbacks=[self.on_message],
                    no_ack=True,
                    accept=["json"],
                ):
                    self.ready.set()
                    last_progress = time.monotonic()
                    seen_before = 0
                    while self.received < self.n and not self.stop.is_set():
                        now = time.monotonic()
                        if now >= self.deadline:
                            self.notes.append(
                                f"run deadline reached with {self.received} of {self.n} results"
                            )
                            break
                        try:
                            conn.drain_events(timeout=0.5)
                        except TimeoutError:
                            pass
                        if self.received != seen_before:
                            seen_before = self.received
                            last_progress = time.monotonic()
                        elif time.monotonic() - last_progress >= self.stall:
                            self.notes.append(
                                f"no result for {self.stall:g} s: stopped with "
                                f"{self.received} of {self.n} results"
                            )
                            break
        except Exception as e:  # reported, not raised: the harness reads stdout
            self.notes.append(f"collector failed: {e!r}")
        finally:
            self.ready.set()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--reply-queue", required=True)
    ap.add_argument("--tag", required=True, help="job ids are TAG-<index>")
    ap.add_argument("--stall", type=float, default=30.0)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()

    start = time.monotonic()
    collector = Collector(
        args.reply_queue, args.tag, args.jobs, args.size, args.stall, start + args.timeout
    )
    collector.start()
    collector.ready.wait(30)

    inputs = [job_input(i, args.size) for i in range(args.jobs)]
    epoch_ns = time.monotonic_ns()
    publish_error = None
    try:
        for i, text in enumerate(inputs):
            if not collector.is_alive() or time.monotonic() - start > args.timeout:
                break
            collector.sent_ns[i] = time.monotonic_ns()
            tasks.upper.apply_async(
                args=(text,), task_id=f"{args.tag}-{i}", reply_to=args.reply_queue
            )
    except Exception as e:
        publish_error = f"publishing failed: {e!r}"
        collector.stop.set()
    publish_seconds = (time.monotonic_ns() - epoch_ns) / 1e9
    remaining = max(0.0, start + args.timeout + 5 - time.monotonic())
    collector.join(remaining)
    collector.stop.set()

    notes = list(collector.notes)
    if publish_error:
        notes.insert(0, publish_error)
    if collector.foreign:
        notes.append(f"{collector.foreign} results of another run")
    last = collector.last_ns or epoch_ns
    out = {
        "received": collector.received,
        "errors": collector.errors,
        "duplicates": collector.duplicates,
        "seconds": (last - epoch_ns) / 1e9,
        "publish_seconds": publish_seconds,
        "latencies_us": collector.latencies_us,
        "notes": notes,
    }
    # apply_async declared this client's own rpc:// reply queue (unused
    # here: results go to --reply-queue); it would linger for a day.
    try:
        with Connection(tasks.BROKER) as conn:
            conn.default_channel.queue_delete(tasks.app.backend.oid)
    except Exception as e:
        notes.append(f"could not delete the rpc reply queue: {e!r}")
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
