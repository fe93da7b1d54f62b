"""numpy arrays through a Master and two Workers, without pickle: each
worker returns the scaled spectrum of a 1 MiB float64 array; the client
checks every reply against its own computation.

    python examples/arrays.py [PULL PUB WORKER_PULL WORKER_PUSH DB]  (ports)

pylm.arrays.dumps sends an array's dtype, shape and memory order in a small
header followed by its raw data; loads gives a read-only view of what
arrived.  A worker method returns its array as it is: the server writes the
header and the data into the reply without joining them first.
"""

from collections import Counter

import numpy as np

from pylm.arrays import dumps, loads
from pylm.clients import Client
from pylm.servers import Master, Worker

from _helpers import addresses, processes, serving

N = (1 << 20) // 8          # float64 values in 1 MiB
ARRAYS = 32


class SpectrumWorker(Worker):
    def spectrum(self, payload):
        signal = loads(payload)                         # a view, no copy
        return np.abs(np.fft.rfft(signal)) / len(signal)

    def who(self, payload):
        return self.name.encode()


def main(argv=None):
    pull, pub, worker_pull, worker_push, db = addresses(5, __doc__, argv)
    master = Master("arrays", pull_address=pull, pub_address=pub,
                    worker_pull_address=worker_pull, worker_push_address=worker_push,
                    db_address=db)
    rng = np.random.default_rng(2026)
    signals = [rng.standard_normal(N) for _ in range(ARRAYS)]
    with serving(master), processes((SpectrumWorker, "worker1", db),
                                    (SpectrumWorker, "worker2", db)):
        with Client("arrays", db) as client:
            first = loads(client.eval("arrays.spectrum", dumps(signals[0])))
            print("one reply: %s %s, %d bytes" % (first.dtype, first.shape, first.nbytes))
            # replies come in the order the workers finish: each is matched
            # to its signal by its first value (the signal's mean, scaled)
            expected = [np.abs(np.fft.rfft(s)) / N for s in signals]
            firsts = np.array([e[0] for e in expected])
            checked = set()
            for reply in client.job("arrays.spectrum", (dumps(s) for s in signals)):
                spectrum = loads(reply)
                i = int(np.argmin(np.abs(firsts - spectrum[0])))
                if i in checked or not np.allclose(spectrum, expected[i]):
                    raise SystemExit("a wrong spectrum came back")
                checked.add(i)
            who = Counter(client.job("arrays.who", (b"" for _ in range(200))))
            print("workers that answered:", len(who))
    print("done: arrays, %d arrays of 1 MiB checked" % len(checked))


if __name__ == "__main__":
    main()
