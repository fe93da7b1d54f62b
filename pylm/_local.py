"""Local links: an ipc endpoint beside each tcp endpoint a Master binds (a
Server: its pull and pub), taken by its clients and workers that run on the
same host.

Large payloads spend most of their time in the kernel's TCP stack
(segmentation, softirq, acks) on top of the two copies every byte costs;
a Unix-domain socket costs the copies alone.  The twin endpoint of
``tcp://HOST:PORT`` is the abstract-namespace socket
``ipc://@pylm/tcp/HOST:PORT`` (Linux): it has no file, so nothing is left
behind when a Master is killed, and it is unique while that tcp endpoint is
bound, so a Master restarted on the same port has the same twin (a client
that sends its calls again finds it).  Abstract sockets belong to a network
namespace: a peer takes the twin only when the Master's :func:`host_id`
(boot id and network namespace) is its own, and anything else (another
host, a container, pylm 0.14, a Master with ``local_ipc=False``) keeps
the tcp address.  The twins and the host id are published in the Master's
cache under the ``LOCAL_*`` keys below; pylm 0.14 peers never ask for them.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Callable, Dict, List, Optional

import zmq

if TYPE_CHECKING:
    from pylm.security import Socket

#: the cache keys a Master publishes (empty values when it has no twins)
LOCAL_HOST_KEY = "local_host"
LOCAL_PULL_KEY = "local_pull_address"
LOCAL_PUB_KEY = "local_pub_address"
LOCAL_ROUTER_KEY = "local_worker_router_address"
#: all of them: configuration keys on every server (pylm._cache.CONFIG_KEYS),
#: so that no remote request can point local peers at another socket
LOCAL_KEYS = (LOCAL_HOST_KEY, LOCAL_PULL_KEY, LOCAL_PUB_KEY, LOCAL_ROUTER_KEY)

_PREFIX = "ipc://@pylm/"


def host_id() -> str:
    """What two processes share when they reach the same abstract sockets:
    this boot of this host and this network namespace ("" where there are
    no abstract sockets, or it cannot be told)."""
    if not sys.platform.startswith("linux"):
        return ""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            boot_id = boot.read().strip()
        netns = os.stat("/proc/self/ns/net")
    except OSError:
        return ""
    return "%s/%d:%d" % (boot_id, netns.st_dev, netns.st_ino)


def twin_of(endpoint: str) -> Optional[str]:
    """The ipc twin of a bound tcp endpoint (None for other transports)."""
    if not endpoint.startswith("tcp://"):
        return None
    return _PREFIX + endpoint.replace("://", "/", 1)


def bind_twin(sock: Socket, logger: logging.Logger) -> str:
    """Bind `sock` also at the twin of the tcp endpoint it was last bound
    to; the twin, or "" when there is none (not tcp, not Linux, or the
    name is taken: then its peers keep tcp).

    A name taken is told to `logger` as a WARNING: abstract sockets have
    no permissions, so the holder may be any process of the host, and peers
    that took this twin before a restart keep sending to whoever holds it
    (they do not ask the cache again)."""
    if not host_id():
        return ""
    endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    twin = twin_of(endpoint)
    if twin is None:
        return ""
    try:
        sock.bind(twin)
    except zmq.ZMQError as exc:
        logger.warning("ipc twin %s of %s not bound (%s): local peers take tcp; peers still "
                       "connected to that twin reach whatever process holds it",
                       twin, endpoint, exc)
        return ""
    return twin


def published(pull: str, pub: str, router: str) -> Dict[str, str]:
    """The cache entries of a server's twins (its config; a Server has no
    `router`)."""
    return {LOCAL_HOST_KEY: host_id() if (pull or pub or router) else "",
            LOCAL_PULL_KEY: pull, LOCAL_PUB_KEY: pub, LOCAL_ROUTER_KEY: router}


def local_addresses(get: Callable[[bytes], bytes], *keys: str) -> Optional[List[str]]:
    """The twins a server published under `keys`, when this process is on
    its host (same boot and network namespace) and it published all of
    them; else None.  `get` asks the server's cache for a key (b"" when
    absent, as from pylm 0.14 or a Server)."""
    mine = host_id()
    if not mine or get(LOCAL_HOST_KEY.encode()).decode() != mine:
        return None
    twins = [get(key.encode()).decode() for key in keys]
    return twins if all(twins) else None
