"""The asyncio client: many calls at once on one client, a job read with
``async for``, a timeout and a cancelled call.

    python examples/aio_client.py [PULL PUB WORKER_PULL WORKER_PUSH DB]  (ports)
"""

import asyncio
import time

from pylm import aio
from pylm.servers import Master, Worker

from _helpers import addresses, processes, serving


class MyWorker(Worker):
    def upper(self, payload):
        return payload.upper()

    def sleepy(self, payload):
        time.sleep(float(payload))      # a call that takes `payload` seconds
        return b"awake"


async def use(db):
    async with aio.Client("my_master", db) as client:
        print(await client.eval("my_master.upper", b"hello"))

        # any number of calls in flight on one client, each with its own reply
        replies = await asyncio.gather(*(client.eval("my_master.upper", b"call %d" % i)
                                         for i in range(1000)))
        print("concurrent:", len(replies), replies[0], replies[-1])

        # a job: payloads from a (sync or async) iterable, replies as they come
        count = 0
        async for reply in client.job("my_master.upper", (b"item %d" % i for i in range(5000))):
            count += 1
        print("job:", count, "replies")

        try:
            await client.eval("my_master.sleepy", b"1", timeout=0.1)
        except TimeoutError:
            print("timed out")

        call = asyncio.ensure_future(client.eval("my_master.sleepy", b"0.5"))
        await asyncio.sleep(0.1)
        call.cancel()                   # its reply, when it comes, is dropped
        await asyncio.gather(call, return_exceptions=True)
        print("cancelled:", call.cancelled(), "calls pending:", client.pending)
        return count


def main(argv=None):
    pull, pub, worker_pull, worker_push, db = addresses(5, __doc__, argv)
    master = Master("my_master", pull_address=pull, pub_address=pub,
                    worker_pull_address=worker_pull, worker_push_address=worker_push,
                    db_address=db)
    with serving(master), processes((MyWorker, "worker1", db), (MyWorker, "worker2", db)):
        count = asyncio.run(use(db))
    print("done: aio_client, %d job replies" % count)


if __name__ == "__main__":
    main()
