"""One Server and a Client: a single call with eval, many with job.

    python examples/single.py [DB_PORT PULL_PORT PUB_PORT]
"""

from pylm.clients import Client
from pylm.servers import Server

from _helpers import addresses, serving


class MyServer(Server):
    def foo(self, payload):
        self.logger.info("got %r", payload)
        return b"you sent me " + payload

    def upper(self, payload):
        return payload.upper()


def main(argv=None):
    db, pull, pub = addresses(3, __doc__, argv)
    server = MyServer("my_server", db_address=db, pull_address=pull, pub_address=pub)
    with serving(server):
        client = Client("my_server", db)
        print(client.eval("my_server.foo", b"a message"))

        words = [b"alpha", b"beta", b"gamma"]
        replies = sorted(client.job("my_server.upper", iter(words), messages=len(words)))
        print("job:", replies)
        client.clean()
    print("done: single, %d job replies" % len(replies))


if __name__ == "__main__":
    main()
