"""An HTTP gateway in front of pylm Workers, built from parts.

    python examples/http_gateway.py

``GET`` or ``POST /<method>`` (the body is the payload) is answered with
what a worker's ``method`` returns.  The gateway's parts:

    HTTP --> HttpGateway --> GatewayRouter --route--> WorkerPushService --> workers
    HTTP <-- HttpGateway <-- GatewayRouter <-- GatewayDealer <--route-- WorkerPullService <--'

Try it by hand with ``curl http://127.0.0.1:PORT/function -d hello`` while
it runs (it prints the port, and serves for ``--serve SECONDS``).
"""

import argparse
import multiprocessing
import threading
import time
import urllib.error
import urllib.request

from pylm._testing import free_port, tcp_addresses
from pylm.parts.gateways import GatewayDealer, GatewayRouter, HttpGateway
from pylm.parts.servers import ServerTemplate
from pylm.parts.services import (CacheService, WorkerPullService, WorkerPushService)
from pylm.servers import Worker

STOP_TIMEOUT = 10.0


class MyWorker(Worker):
    def function(self, payload):
        return b"acknowledged " + (payload or b"(no body)")


def run_worker(name, db):
    MyWorker(name, db).start()      # SIGTERM makes start() return


def build_gateway(port, worker_pull, worker_push, db):
    server = ServerTemplate()
    inproc = "inproc://gateway_router"
    server.register_inbound(GatewayRouter, "gateway_router", inproc, route="WorkerPush")
    server.register_outbound(GatewayDealer, "gateway_dealer", listen_address=inproc)
    server.register_bypass(HttpGateway, name="HttpGateway", listen_address=inproc,
                           hostname="127.0.0.1", port=port)
    server.register_inbound(WorkerPullService, "WorkerPull", worker_pull,
                            route="gateway_dealer")
    server.register_outbound(WorkerPushService, "WorkerPush", worker_push)
    server.register_bypass(CacheService, "Cache", db)
    server.preset_cache(name="gateway", db_address=db, worker_pull_address=worker_pull,
                        worker_push_address=worker_push)
    return server


def fetch(url, data=None):
    try:
        with urllib.request.urlopen(url, data=data, timeout=STOP_TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=float, default=0.0,
                        help="keep serving this many seconds after the demo")
    args = parser.parse_args(argv)

    port = free_port()
    worker_pull, worker_push, db = tcp_addresses(3)
    server = build_gateway(port, worker_pull, worker_push, db)
    thread = threading.Thread(target=server.start, name="gateway", daemon=True)
    thread.start()
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=run_worker, args=("worker%d" % i, db), daemon=True)
               for i in (1, 2)]
    for proc in workers:
        proc.start()
    try:
        if not server.ready.wait(STOP_TIMEOUT):
            raise RuntimeError("the gateway did not start")
        base = "http://127.0.0.1:%d" % port
        print("gateway at", base)
        print("GET /function ->", *fetch(base + "/function"))
        print("POST /function ->", *fetch(base + "/function", b"hello"))
        print("GET /nothing ->", *fetch(base + "/nothing"))
        time.sleep(args.serve)
    finally:
        for proc in workers:
            proc.terminate()
            proc.join(STOP_TIMEOUT)
        server.stop()
        thread.join(STOP_TIMEOUT)
    print("done: http_gateway")


if __name__ == "__main__":
    main()
