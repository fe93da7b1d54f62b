"""The cache every server carries: a Client stores data with set/get/delete,
and a server method reads it through self.cache.

    python examples/cache.py [DB_PORT PULL_PORT PUB_PORT]
"""

from pylm.clients import Client
from pylm.servers import Server

from _helpers import addresses, serving


class CachedServer(Server):
    def greet(self, key):
        """Look up a name that a client stored under `key` (the payload)."""
        name = self.cache.get(key.decode())
        return b"hello, " + (name or b"stranger")


def main(argv=None):
    db, pull, pub = addresses(3, __doc__, argv)
    server = CachedServer("cached", db_address=db, pull_address=pull, pub_address=pub)
    with serving(server):
        client = Client("cached", db)
        key = client.set(b"Guillem")                   # a new key is made up
        print("stored under", key)
        print("get:", client.get(key))
        print(client.eval("cached.greet", key.encode()))

        client.set(b"Ada", "my-key")                   # or chosen by the caller
        print(client.eval("cached.greet", b"my-key"))
        print("delete:", client.delete("my-key"))
        print("after delete:", client.get("my-key"))
        print(client.eval("cached.greet", b"my-key"))
        client.clean()
    print("done: cache")


if __name__ == "__main__":
    main()
