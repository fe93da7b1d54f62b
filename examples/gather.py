"""A Master that overrides gather: every result of the workers passes
through it on the way back, here to keep a running total and to tag the
reply with it.

    python examples/gather.py [PULL PUB WORKER_PULL WORKER_PUSH DB]  (ports)
"""

from pylm.clients import Client
from pylm.servers import Master, Worker

from _helpers import addresses, processes, serving


class SummingMaster(Master):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.total = 0

    def gather(self, message):
        self.total += int(message.payload)
        yield self.change_payload(message, b"%s (total so far %d)"
                                  % (message.payload, self.total))


class SquareWorker(Worker):
    def square(self, payload):
        return str(int(payload) ** 2).encode()


def main(argv=None):
    pull, pub, worker_pull, worker_push, db = addresses(5, __doc__, argv)
    master = SummingMaster("summer", pull_address=pull, pub_address=pub,
                           worker_pull_address=worker_pull,
                           worker_push_address=worker_push, db_address=db)
    with serving(master), processes((SquareWorker, "worker", db)):
        client = Client("summer", db)
        print(client.eval("summer.square", b"3"))
        numbers = [b"%d" % i for i in range(1, 11)]
        replies = list(client.job("summer.square", iter(numbers), messages=len(numbers)))
        client.clean()
    for reply in replies:
        print(reply)
    # 9 from the first call, then 1 + 4 + ... + 100 = 385
    print("done: gather, total %d" % master.total)


if __name__ == "__main__":
    main()
