"""An HTTP worker behind a server built from parts.

    python examples/http_worker.py

The worker is a WSGI application (pylm.remote.server): each method of the
RequestHandler subclass is callable as ``server.method``.  Here it runs
under wsgiref's server (DebugServer); in production, under any WSGI server
(``gunicorn http_worker:app``).  The server's HttpConnection part POSTs
each call to it, up to `max_workers` at once:

    client --> PullService "Pull" --> HttpConnection "HttpConnection" --HTTP--> worker
    client <-- PubService "Pub" <--(the connection's route)--'
"""

import threading

from pylm._testing import tcp_addresses
from pylm.clients import Client
from pylm.parts.connections import HttpConnection
from pylm.parts.servers import ServerTemplate
from pylm.parts.services import CacheService, PubService, PullService
from pylm.remote.server import DebugServer, RequestHandler, WSGIApplication

STOP_TIMEOUT = 10.0


class MyHandler(RequestHandler):
    def foo(self, payload):
        return payload + b" processed online"


app = WSGIApplication(MyHandler)


def main():
    worker = DebugServer("127.0.0.1", 0, MyHandler, threaded=True)
    worker_thread = threading.Thread(target=worker.serve_forever, args=(0.1,), daemon=True)
    worker_thread.start()

    pull, pub, db = tcp_addresses(3)
    server = ServerTemplate()
    server.register_inbound(PullService, "Pull", pull, route="HttpConnection")
    server.register_outbound(HttpConnection, "HttpConnection",
                             "http://127.0.0.1:%d" % worker.address[1], route="Pub",
                             max_workers=4)
    server.register_outbound(PubService, "Pub", pub)
    server.register_bypass(CacheService, "Cache", db)
    server.preset_cache(name="server", db_address=db, pull_address=pull, pub_address=pub)
    thread = threading.Thread(target=server.start, name="server", daemon=True)
    thread.start()
    try:
        with Client("server", db, timeout=STOP_TIMEOUT) as client:
            print(client.eval("server.foo", b"a message", timeout=STOP_TIMEOUT))
            replies = list(client.job("server.foo", (b"call %d" % i for i in range(20)),
                                      messages=20, timeout=STOP_TIMEOUT))
        print("%d replies, the last: %s" % (len(replies), sorted(replies)[-1].decode()))
    finally:
        server.stop()
        thread.join(STOP_TIMEOUT)
        worker.shutdown()
        worker_thread.join(STOP_TIMEOUT)
        worker.server_close()
    print("done: http_worker")


if __name__ == "__main__":
    main()
