"""A stream of two stages: a pipelined Server passes each result on to a
Pipeline, which sends it to the client.  The client sends to the server and
listens at the last stage (sub_address); `function` names the method of
each stage in order.

    python examples/pipeline.py [DB PULL PUB PIPELINE_DB PIPELINE_PUB]  (ports)
"""

from pylm.clients import Client
from pylm.servers import Pipeline, Server

from _helpers import addresses, serving


class MyServer(Server):
    def foo(self, payload):
        return b"you sent me " + payload


class MyPipeline(Pipeline):
    def bar(self, payload):
        return payload + b", and the pipeline saw it"


def main(argv=None):
    db, pull, pub, pipeline_db, pipeline_pub = addresses(5, __doc__, argv)
    server = MyServer("server", db_address=db, pull_address=pull, pub_address=pub,
                      pipelined=True)
    pipeline = MyPipeline("pipeline", db_address=pipeline_db, sub_address=pub,
                          pub_address=pipeline_pub, previous="server", to_client=True)
    with serving(server, pipeline):
        client = Client("server", db, sub_address=pipeline_pub)
        print(client.eval(["server.foo", "pipeline.bar"], b"a message"))
        replies = list(client.job(["server.foo", "pipeline.bar"],
                                  (b"message %d" % i for i in range(3)), messages=3))
        client.clean()
    for reply in sorted(replies):
        print(reply)
    print("done: pipeline, %d replies" % len(replies))


if __name__ == "__main__":
    main()
