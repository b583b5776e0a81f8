"""The Celery side of Kiln's broker benchmark: one task, ``upper``.

Started by the harness (``cargo run --release -p kiln-integration-tests
--bin broker-bench``) as::

    celery -A tasks worker --pool=prefork --concurrency=2 -Q <queue> \
        --loglevel=WARNING --without-gossip --without-mingle --without-heartbeat

and imported by ``driver.py`` so that both sides declare the same queue.
Settings come from the environment:

- ``KILN_BENCH_BROKER``: the broker URL (pyamqp), default the local broker;
- ``KILN_BENCH_QUEUE``: the jobs queue (and its direct exchange), declared
  durable;
- ``KILN_BENCH_QUEUE_TYPE``: ``quorum`` or ``classic``;
- ``KILN_BENCH_PREFETCH_MULTIPLIER``: ``worker_prefetch_multiplier``
  (the harness passes prefetch / 2, since the pool has 2 processes);
- ``KILN_BENCH_ACKS_LATE``: ``1`` to ack after the task ran (the default,
  Kiln's discipline: ack once the reply is out), ``0`` to ack on receipt.
"""

import os

from celery import Celery
from celery.worker.consumer import Consumer
from kombu import Exchange, Queue


def _env(name, default):
    return os.environ.get(name) or default


BROKER = _env("KILN_BENCH_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
QUEUE = _env("KILN_BENCH_QUEUE", "kiln-bench-celery")
QUEUE_TYPE = _env("KILN_BENCH_QUEUE_TYPE", "quorum")
if QUEUE_TYPE not in ("quorum", "classic"):
    raise SystemExit(f"KILN_BENCH_QUEUE_TYPE must be quorum or classic, not {QUEUE_TYPE!r}")
MULTIPLIER = int(_env("KILN_BENCH_PREFETCH_MULTIPLIER", "4"))
ACKS_LATE = _env("KILN_BENCH_ACKS_LATE", "1") == "1"

class BenchConsumer(Consumer):
    """Celery's consumer without the native-delayed-delivery bootstep.

    With a quorum queue, Celery 5.5+ declares a tree of shared
    ``celery_delayed_*`` exchanges and queues at worker start, for
    ``countdown``/``eta``, which the benchmark never uses. Leaving the
    bootstep out keeps the broker clean; it does not touch the task path.
    """

    class Blueprint(Consumer.Blueprint):
        default_steps = [
            s for s in Consumer.Blueprint.default_steps if not s.endswith(":DelayedDelivery")
        ]


app = Celery("tasks", broker=BROKER, backend="rpc://")
_args = {"x-queue-type": "quorum"} if QUEUE_TYPE == "quorum" else {}
app.conf.update(
    task_queues=[
        Queue(
            QUEUE,
            Exchange(QUEUE, type="direct", durable=True),
            routing_key=QUEUE,
            durable=True,
            queue_arguments=_args,
        )
    ],
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=MULTIPLIER,
    task_acks_late=ACKS_LATE,
    worker_consumer="tasks:BenchConsumer",
    # No remote control: no shared celery.pidbox exchange left behind.
    worker_enable_remote_control=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="tasks.upper")
def upper(text):
    """The job: the input upper-cased (Kiln's uppercase plugin)."""
    return text.upper()
