"""Live statistics of a running server: what ``Client.stats()`` and
``pylm stats`` return (shared/API.md, "Operations").

A server answers a cache request ``<name>.stats`` (pylm/_cache.py) with
the JSON of :func:`server_stats`.  The numbers are the counters the core
keeps anyway (``Router.counters()``, ``Router.details()``), read from the
cache service's thread while the loop runs: nothing is added to the path
of a message but plain integer increments.

Fields: ``name``, ``kind`` (the pylm class: Server, Pipeline, Sink,
Master, Hub), ``class``, ``running``, ``uptime_s``, ``received`` (calls
taken in), ``sent`` (replies and results sent), ``bad`` (input dropped),
``errors`` (error replies), ``refused`` (handshakes refused at its CURVE
sockets, pylm.security); for servers that run methods, ``methods``
(``{name: {"calls", "errors"}}``); for a Master or Hub, ``workers`` (one
entry per connected worker: ``id``, ``credit``, ``in_flight``, ``done``,
``last_seen_s``), ``given_up``, ``requeued``, ``poisoned``, ``queued``,
``late``, ``to_workers``, ``to_legacy``; for servers that publish,
``held`` (replies held now for a subscriber still to come) and
``held_dropped`` (held replies dropped past ``hold_seconds`` or
``hold_replies``; pylm_core/subscriptions.pyx).  Handshake pings of
clients are not counted.
"""

import json
from typing import Any, Callable, Dict, Optional

__all__ = ["server_stats", "stats_reply", "parse_stats", "StatsUnavailable"]

#: Master/Hub counters given under another name (core name -> stats name).
_POOL_FIELDS: Dict[str, str] = {
    "workers_lost": "given_up", "requeued": "requeued", "poisoned": "poisoned",
    "late": "late", "to_workers": "to_workers", "to_legacy": "to_legacy"}


class StatsUnavailable(RuntimeError):
    """The server answered the statistics request with something that is
    not statistics: a pylm 0.14 server (or a server built from parts)
    answers an operation it does not know with empty bytes."""


def kind_of(server: Any) -> str:
    """The pylm class a server is an instance of (the first in its MRO
    defined by pylm.servers)."""
    for cls in type(server).__mro__:
        if cls.__module__ == "pylm.servers":
            return cls.__name__
    return type(server).__name__


def server_stats(server: Any, counters: Dict[str, int], details: Dict[str, Any],
                 uptime: Optional[float]) -> Dict[str, Any]:
    """The statistics dict of `server` from its core Router's
    ``counters()`` and ``details()``; `uptime`: seconds it has served (so
    far, or until it stopped), None when it never started; ``running``
    when it serves now (the router is live)."""
    executes = "processed" in counters
    stats: Dict[str, Any] = {
        "name": server.name,
        "kind": kind_of(server),
        "class": "%s.%s" % (type(server).__module__, type(server).__qualname__),
        "running": server._runner is not None,
        "uptime_s": round(uptime, 3) if uptime is not None else 0.0,
        "received": counters.get("processed" if executes else "received", 0),
        "sent": counters.get("sent", 0),
        "bad": counters.get("bad", 0),
        "errors": counters.get("failed" if executes else "errors", 0),
    }
    if "held" in counters:
        stats["held"] = counters["held"]
        stats["held_dropped"] = counters["held_dropped"]
    if "methods" in details:
        stats["methods"] = details["methods"]
    if "workers" in details:
        stats["workers"] = details["workers"]
        stats["queued"] = details["queued"]
        for core_name, name in _POOL_FIELDS.items():
            stats[name] = counters.get(core_name, 0)
    return stats


def stats_reply(stats: Dict[str, Any]) -> bytes:
    """The cache reply carrying `stats`: its JSON, UTF-8."""
    return json.dumps(stats, sort_keys=True).encode()


def parse_stats(reply: bytes, db_address: str) -> Dict[str, Any]:
    """The dict a server sent back (stats_reply), or StatsUnavailable."""
    if not reply:
        raise StatsUnavailable(
            "the server at %s sent no statistics: a pylm 0.14 server, or one built "
            "from parts, does not serve them" % db_address)
    try:
        stats = json.loads(reply)
    except ValueError:
        stats = None
    if not isinstance(stats, dict):
        raise StatsUnavailable("the server at %s answered the statistics request with %r"
                               % (db_address, reply[:80]))
    return stats
