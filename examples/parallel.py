"""A Master spreading calls over two Workers, each in its own process.

    python examples/parallel.py [PULL PUB WORKER_PULL WORKER_PUSH DB]  (ports)
"""

import time
from collections import Counter

from pylm.clients import Client
from pylm.servers import Master, Worker

from _helpers import addresses, processes, serving


class MyWorker(Worker):
    def foo(self, payload):
        time.sleep(0.002)   # some work, so that both workers get a share
        return self.name.encode() + b" processed " + payload


def main(argv=None):
    pull, pub, worker_pull, worker_push, db = addresses(5, __doc__, argv)
    master = Master("my_master", pull_address=pull, pub_address=pub,
                    worker_pull_address=worker_pull, worker_push_address=worker_push,
                    db_address=db)
    with serving(master), processes((MyWorker, "worker1", db), (MyWorker, "worker2", db)):
        client = Client("my_master", db)
        print(client.eval("my_master.foo", b"a single message"))

        payloads = (b"message %d" % i for i in range(500))
        who = Counter(reply.split(b" ")[0].decode()
                      for reply in client.job("my_master.foo", payloads, messages=500))
        client.clean()
        print("replies per worker:", dict(sorted(who.items())))
    print("done: parallel, %d replies" % sum(who.values()))


if __name__ == "__main__":
    main()
