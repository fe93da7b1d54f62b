"""A pipelined Master: the workers' results go on to a Pipeline instead of
back to the client, which listens at the Pipeline.

    client --> master --> workers --> master --> pipeline --> client

    python examples/master_pipeline.py [PULL PUB WORKER_PULL WORKER_PUSH DB PIPELINE_DB PIPELINE_PUB]  (ports)
"""

from pylm.clients import Client
from pylm.servers import Master, Pipeline, Worker

from _helpers import addresses, processes, serving


class MyWorker(Worker):
    def foo(self, payload):
        return payload.upper()


class MyPipeline(Pipeline):
    def bar(self, payload):
        return b"pipelined " + payload


def main(argv=None):
    (pull, pub, worker_pull, worker_push, db, pipeline_db,
     pipeline_pub) = addresses(7, __doc__, argv)
    master = Master("master", pull_address=pull, pub_address=pub,
                    worker_pull_address=worker_pull, worker_push_address=worker_push,
                    db_address=db, pipelined=True)
    pipeline = MyPipeline("pipeline", db_address=pipeline_db, sub_address=pub,
                          pub_address=pipeline_pub, previous="master", to_client=True)
    with serving(master, pipeline), processes((MyWorker, "worker", db)):
        client = Client("master", db, sub_address=pipeline_pub)
        print(client.eval(["master.foo", "pipeline.bar"], b"a message"))
        replies = list(client.job(["master.foo", "pipeline.bar"],
                                  (b"message %d" % i for i in range(10)), messages=10))
        client.clean()
    for reply in sorted(replies):
        print(reply)
    print("done: master_pipeline, %d replies" % len(replies))


if __name__ == "__main__":
    main()
