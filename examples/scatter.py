"""A Master that overrides scatter: each incoming message is split into one
message per word, so several workers share the pieces of one call, and the
client collects one reply per piece with eval(..., messages=N).

    python examples/scatter.py [PULL PUB WORKER_PULL WORKER_PUSH DB]  (ports)
"""

from pylm.clients import Client
from pylm.servers import Master, Worker

from _helpers import addresses, processes, serving


class SplittingMaster(Master):
    def scatter(self, message):
        for word in message.payload.split():
            yield self.change_payload(message, word)


class MyWorker(Worker):
    def shout(self, payload):
        return payload.upper() + b"!"


def main(argv=None):
    pull, pub, worker_pull, worker_push, db = addresses(5, __doc__, argv)
    master = SplittingMaster("splitter", pull_address=pull, pub_address=pub,
                             worker_pull_address=worker_pull,
                             worker_push_address=worker_push, db_address=db)
    sentence = b"the quick brown fox"
    with serving(master), processes((MyWorker, "worker1", db), (MyWorker, "worker2", db)):
        client = Client("splitter", db)
        replies = client.eval("splitter.shout", sentence, messages=len(sentence.split()))
        client.clean()
    # the pieces may come back in any order
    print("replies:", b" ".join(sorted(replies)).decode())
    print("done: scatter, %d replies for one call" % len(replies))


if __name__ == "__main__":
    main()
