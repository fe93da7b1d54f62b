"""A MuxWorker: its method is a generator, and each value it yields is one
reply; the client asks for that many with eval(..., messages=N).

    python examples/mux.py [PULL PUB WORKER_PULL WORKER_PUSH DB]  (ports)
"""

from pylm.clients import Client
from pylm.servers import Master, MuxWorker

from _helpers import addresses, processes, serving


class Counter(MuxWorker):
    def count(self, payload):
        """Yield 'payload-1' ... 'payload-N' where N is in the payload."""
        name, n = payload.split(b":")
        for i in range(1, int(n) + 1):
            yield b"%s-%d" % (name, i)


def main(argv=None):
    pull, pub, worker_pull, worker_push, db = addresses(5, __doc__, argv)
    master = Master("mux", pull_address=pull, pub_address=pub,
                    worker_pull_address=worker_pull, worker_push_address=worker_push,
                    db_address=db)
    with serving(master), processes((Counter, "counter", db)):
        client = Client("mux", db)
        print(client.eval("mux.count", b"a:1"))
        replies = client.eval("mux.count", b"b:5", messages=5)
        client.clean()
    print("replies:", b" ".join(replies).decode())
    print("done: mux, %d replies for one call" % len(replies))


if __name__ == "__main__":
    main()
