"""A master built from parts (the low-level API, pylm.parts), spreading
calls over two pylm Workers in their own processes.

    python examples/parts_master.py

The server is four parts and a cache, routed in one loop:

    client --PUSH--> PullService "Pull" --route--> WorkerPushService "WorkerPush" --> workers
    client <--SUB--- PubService "Pub" <--route-- WorkerPullService "WorkerPull" <-- workers

Workers find the addresses in the cache (``preset_cache``); in this mode
they talk PUSH/PULL, as pylm 0.14 workers did.
"""

import multiprocessing
import threading
import time
from collections import Counter

from pylm._testing import tcp_addresses
from pylm.clients import Client
from pylm.parts.servers import ServerTemplate
from pylm.parts.services import (CacheService, PubService, PullService, WorkerPullService,
                                 WorkerPushService)
from pylm.servers import Worker

STOP_TIMEOUT = 10.0


class MyWorker(Worker):
    def foo(self, payload):
        return self.name.encode() + b" processed " + payload


def build_master(name, pull, pub, worker_pull, worker_push, db):
    server = ServerTemplate()
    server.register_inbound(PullService, "Pull", pull, route="WorkerPush")
    server.register_inbound(WorkerPullService, "WorkerPull", worker_pull, route="Pub")
    server.register_outbound(WorkerPushService, "WorkerPush", worker_push)
    server.register_outbound(PubService, "Pub", pub)
    server.register_bypass(CacheService, "Cache", db)
    server.preset_cache(name=name, db_address=db, pull_address=pull, pub_address=pub,
                        worker_pull_address=worker_pull, worker_push_address=worker_push)
    return server


def wait_for_workers(client, n, timeout=STOP_TIMEOUT):
    """Call until `n` workers have answered: a PUSH gives work only to
    the workers connected when it sends."""
    seen = set()
    deadline = time.monotonic() + timeout
    while len(seen) < n and time.monotonic() < deadline:
        for reply in client.job("my_master.foo", (b"hello" for _ in range(10)), messages=10,
                                timeout=timeout):
            seen.add(reply.split(b" ")[0])
        time.sleep(0.05)


def run_worker(name, db):
    MyWorker(name, db).start()      # SIGTERM makes start() return


def main():
    pull, pub, worker_pull, worker_push, db = tcp_addresses(5)
    master = build_master("my_master", pull, pub, worker_pull, worker_push, db)
    thread = threading.Thread(target=master.start, name="master", daemon=True)
    thread.start()
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=run_worker, args=("worker%d" % i, db), daemon=True)
               for i in (1, 2)]
    for proc in workers:
        proc.start()
    try:
        with Client("my_master", db, timeout=STOP_TIMEOUT) as client:
            print(client.eval("my_master.foo", b"a single message", timeout=STOP_TIMEOUT))
            wait_for_workers(client, len(workers))
            payloads = (b"message %d" % i for i in range(200))
            who = Counter(reply.split(b" ")[0].decode()
                          for reply in client.job("my_master.foo", payloads, messages=200,
                                                  timeout=STOP_TIMEOUT))
        print("replies per worker:", dict(sorted(who.items())))
    finally:
        for proc in workers:
            proc.terminate()
            proc.join(STOP_TIMEOUT)
        master.stop()
        thread.join(STOP_TIMEOUT)
    print("done: parts_master, %d replies" % sum(who.values()))


if __name__ == "__main__":
    main()
