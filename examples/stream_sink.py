"""Branches joined again by a Sink: the server sends even numbers down one
Pipeline and odd ones down another, and a Sink subscribed to both brings
every result back together for the client, which listens at the Sink.

    server --even--> pipeline A --\\
           \\--odd---> pipeline B ---> sink --> client

    python examples/stream_sink.py [DB PULL PUB A_DB A_PUB B_DB B_PUB SINK_DB SINK_PUB]  (ports)
"""

from pylm.clients import Client
from pylm.servers import Pipeline, Server, Sink

from _helpers import addresses, answered, serving


class RoutingServer(Server):
    def number(self, payload):
        return payload

    def handle_stream(self, message):
        topic = "even" if int(message.payload) % 2 == 0 else "odd"
        message.stage += 1
        return topic, message


class Even(Pipeline):
    def describe(self, payload):
        return payload + b" is even"


class Odd(Pipeline):
    def describe(self, payload):
        return payload + b" is odd"


class Collect(Sink):
    def collect(self, payload):
        return b"sink got: " + payload


def main(argv=None):
    (db, pull, pub, a_db, a_pub, b_db, b_pub,
     sink_db, sink_pub) = addresses(9, __doc__, argv)
    server = RoutingServer("server", db_address=db, pull_address=pull, pub_address=pub,
                           pipelined=True)
    # both branches are the stage 'branch', and pipelined (to_client=False):
    # they publish to their own name, where the sink listens
    even = Even("branch", db_address=a_db, sub_address=pub, pub_address=a_pub,
                previous="even", to_client=False)
    odd = Odd("branch", db_address=b_db, sub_address=pub, pub_address=b_pub,
              previous="odd", to_client=False)
    sink = Collect("sink", db_address=sink_db, sub_addresses=[a_pub, b_pub],
                   pub_address=sink_pub, previous=["branch", "branch"], to_client=True)
    function = ["server.number", "branch.describe", "sink.collect"]
    with serving(server, even, odd, sink):
        client = Client("server", db, sub_address=sink_pub)
        answered(client, function, b"0")    # both branches joined (see _helpers.answered)
        answered(client, function, b"1")
        replies = list(client.job(function, (b"%d" % i for i in range(10)), messages=10))
        client.clean()
    for reply in sorted(replies, key=lambda r: int(r.split()[2])):
        print(reply)
    print("done: stream_sink, %d replies" % len(replies))


if __name__ == "__main__":
    main()
