"""A Server whose results go on to a Hub, which spreads them over Workers:
a Hub is a Master whose inbound is a subscription to the previous stage.
The client sends to the server and listens at the Hub.

    server --> hub --> worker1, worker2 --> hub --> client

    python examples/server_hub.py [DB PULL PUB HUB_PUB HUB_WORKER_PULL HUB_WORKER_PUSH HUB_DB]  (ports)
"""

import time
from collections import Counter

from pylm.clients import Client
from pylm.servers import Hub, Server, Worker

from _helpers import addresses, processes, serving


class MyServer(Server):
    def foo(self, payload):
        return b"you sent me " + payload


class MyWorker(Worker):
    def foo(self, payload):
        time.sleep(0.005)   # some work, so that both workers get a share
        return self.name.encode() + b" processed " + payload


def main(argv=None):
    (db, pull, pub, hub_pub, hub_worker_pull, hub_worker_push,
     hub_db) = addresses(7, __doc__, argv)
    server = MyServer("server", db_address=db, pull_address=pull, pub_address=pub,
                      pipelined=True)
    hub = Hub("hub", sub_address=pub, pub_address=hub_pub,
              worker_pull_address=hub_worker_pull, worker_push_address=hub_worker_push,
              db_address=hub_db, previous="server", pipelined=False)
    with serving(server, hub), \
            processes((MyWorker, "worker1", hub_db), (MyWorker, "worker2", hub_db)):
        client = Client("server", db, sub_address=hub_pub)
        print(client.eval(["server.foo", "hub.foo"], b"a message"))
        replies = list(client.job(["server.foo", "hub.foo"],
                                  (b"message %d" % i for i in range(100)), messages=100))
        client.clean()
    print("replies per worker:", dict(sorted(Counter(r.split()[0].decode()
                                                     for r in replies).items())))
    print("done: server_hub, %d replies" % len(replies))


if __name__ == "__main__":
    main()
