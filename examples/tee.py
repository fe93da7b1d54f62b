"""A tee: one pipelined Server feeds two Pipelines that both subscribe to
it.  Every message goes down both branches; here one branch answers the
client and the other keeps a copy of what passed and sends nothing on (a
method returning None).  Both branches run the stage named 'branch'.

    python examples/tee.py [DB PULL PUB ARCHIVE_DB ARCHIVE_PUB REPLY_DB REPLY_PUB]  (ports)
"""

import time

from pylm.clients import Client
from pylm.servers import Pipeline, Server

from _helpers import addresses, serving


class MyServer(Server):
    def foo(self, payload):
        return b"you sent me " + payload


class Archive(Pipeline):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def process(self, payload):
        self.seen.append(payload)
        # returns None: nothing goes on from this branch


def kept(archive):
    """What the archive kept, but for the probes."""
    return sorted(p for p in archive.seen if not p.endswith(b"probe"))


class Reply(Pipeline):
    def process(self, payload):
        return payload + b", and I pipelined it"


def main(argv=None):
    db, pull, pub, archive_db, archive_pub, reply_db, reply_pub = addresses(7, __doc__, argv)
    server = MyServer("server", db_address=db, pull_address=pull, pub_address=pub,
                      pipelined=True)
    archive = Archive("branch", db_address=archive_db, sub_address=pub,
                      pub_address=archive_pub, previous="server", to_client=True)
    reply = Reply("branch", db_address=reply_db, sub_address=pub,
                  pub_address=reply_pub, previous="server", to_client=True)
    function = ["server.foo", "branch.process"]
    n = 5
    with serving(server, archive, reply):
        client = Client("server", db, sub_address=reply_pub)
        # The client's first call waits until the branch it listens at has
        # joined the server; the archive branch may join a moment later
        # (PUB/SUB drops what a late subscriber was not there for): probe.
        while not archive.seen:
            client.eval(function, b"probe")
            time.sleep(0.01)

        replies = list(client.job(function, (b"message %d" % i for i in range(n)),
                                  messages=n))
        client.clean()
        deadline = time.monotonic() + 10           # the archive may be a little behind
        while len(kept(archive)) < n and time.monotonic() < deadline:
            time.sleep(0.01)
    for reply_payload in sorted(replies):
        print("client got:", reply_payload)
    print("the archive kept:", kept(archive))
    print("done: tee, %d replies, %d archived" % (len(replies), len(kept(archive))))


if __name__ == "__main__":
    main()
