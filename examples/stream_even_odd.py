"""A server that routes its stream by content: handle_stream publishes
even numbers to topic 'even' and odd ones to topic 'odd', and a Pipeline
subscribes to each.  Two clients send the same ten numbers; one listens at
the 'even' pipeline and gets the even ones back, the other at the 'odd'
pipeline (a reply goes out where its branch ends, to its own client).

    python examples/stream_even_odd.py [DB PULL PUB EVEN_DB EVEN_PUB ODD_DB ODD_PUB]  (ports)
"""

from pylm.clients import Client
from pylm.servers import Pipeline, Server

from _helpers import addresses, answered, serving


class RoutingServer(Server):
    def number(self, payload):
        return payload

    def handle_stream(self, message):
        topic = "even" if int(message.payload) % 2 == 0 else "odd"
        message.stage += 1          # a pipelined handle_stream moves the stage on
        return topic, message


class Even(Pipeline):
    def describe(self, payload):
        return payload + b" is even"


class Odd(Pipeline):
    def describe(self, payload):
        return payload + b" is odd"


def main(argv=None):
    db, pull, pub, even_db, even_pub, odd_db, odd_pub = addresses(7, __doc__, argv)
    server = RoutingServer("server", db_address=db, pull_address=pull, pub_address=pub,
                           pipelined=True)
    even = Even("numbers", db_address=even_db, sub_address=pub, pub_address=even_pub,
                previous="even", to_client=True)
    odd = Odd("numbers", db_address=odd_db, sub_address=pub, pub_address=odd_pub,
              previous="odd", to_client=True)
    function = ["server.number", "numbers.describe"]
    with serving(server, even, odd):
        evens = Client("server", db, sub_address=even_pub)
        odds = Client("server", db, sub_address=odd_pub)
        answered(evens, function, b"0")     # both branches joined (see _helpers.answered)
        answered(odds, function, b"1")

        numbers = [b"%d" % i for i in range(10)]
        # each client gets back the half of its numbers that ends at its branch
        even_replies = list(evens.job(function, iter(numbers), messages=5))
        odd_replies = list(odds.job(function, iter(numbers), messages=5))
        evens.clean()
        odds.clean()
    for reply in sorted(even_replies + odd_replies, key=lambda r: int(r.split()[0])):
        print(reply)
    print("done: stream_even_odd, %d even and %d odd replies"
          % (len(even_replies), len(odd_replies)))


if __name__ == "__main__":
    main()
