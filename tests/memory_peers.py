"""The processes of test_memory.py's job, in a module of their own: a
spawned child imports the module of what it runs, and this one imports no
pytest (8 MB of the resident memory measured)."""

import os
import time

from pylm.clients import Client
from pylm.servers import Worker

N = int(os.environ.get("PYLM_MEMORY_MESSAGES", 1_000_000))
SLOW_UNTIL = 200_000        # the client sleeps 20 ms every 1,000 replies until here


class EchoWorker(Worker):
    """Runs in a child process: module level, pickled by reference."""

    def tag(self, payload):
        return payload


def rss_kb(pid, field="VmRSS"):
    """`field` of /proc/<pid>/status in kB: VmRSS (resident now), VmHWM
    (its peak), RssAnon, RssFile; None once the process is gone."""
    try:
        with open("/proc/%d/status" % pid) as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def run_client(db, progress, go, conn):
    """The client process: wait for `go`, run the job, send back
    (received, duplicates, missing, seconds), then wait for the parent to
    read its peak RSS and close the pipe; `progress` is the count of
    replies so far, for the sampler."""
    seen = bytearray(N // 8 + 1)        # a bit per call: 125 kB, not 1 MB
    received = duplicates = 0
    with Client("mem", db, timeout=30) as client:
        conn.send("ready")
        if not go.wait(60):
            return
        t0 = time.monotonic()
        for reply in client.job("mem.tag", (b"%d" % i for i in range(N)), timeout=60):
            i = int(reply)
            bit = 1 << (i & 7)
            if seen[i >> 3] & bit:
                duplicates += 1
            seen[i >> 3] |= bit
            received += 1
            if received % 1000 == 0:
                progress.value = received
                if received <= SLOW_UNTIL:
                    time.sleep(0.02)
        seconds = time.monotonic() - t0
    missing = N - sum(bin(byte).count("1") for byte in seen)
    conn.send((received, duplicates, missing, seconds))
    conn.poll(60)                       # until the parent closes its end
    conn.close()
