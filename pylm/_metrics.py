"""Prometheus metrics of a running server (``metrics_port=``, ``pylm
server/master --metrics-port``): the live statistics (pylm/_stats.py) in
Prometheus' text format over HTTP, served by prometheus_client.

prometheus_client is an optional dependency (the extra ``pylm[metrics]``),
imported only when a server is given a metrics port.  Nothing is counted
for the metrics: each scrape reads ``server.live_stats()``, as
``Client.stats()`` does, so the message path is the same with and without
them.

Names follow Prometheus' conventions: counters end in ``_total``, every
series has a ``server`` label (the server's name), per-method series a
``method`` label, per-worker series a ``worker`` label (the worker's id).
"""

import importlib
from typing import Any, Dict, Iterator, Optional, Tuple, Union

__all__ = ["MetricsServer", "parse_metrics_address", "MISSING"]

MISSING = ("metrics_port needs prometheus_client, an optional dependency of pylm: "
           "pip install 'pylm[metrics]' (or pip install prometheus_client)")

#: stats field -> (metric name without _total, help) of the counters every
#: server has.
COUNTERS = {
    "received": ("pylm_messages_received", "Calls the server took in."),
    "sent": ("pylm_messages_sent", "Replies and results the server sent."),
    "bad": ("pylm_messages_bad", "Input dropped as malformed."),
    "errors": ("pylm_errors", "Error replies (a method or hook raised, no such method)."),
    "refused": ("pylm_handshakes_refused", "Handshakes refused at CURVE sockets (pylm.security)."),
}
#: The same for a Master or Hub.
POOL_COUNTERS = {
    "given_up": ("pylm_workers_given_up", "Workers given up as dead or frozen."),
    "requeued": ("pylm_messages_requeued", "Messages sent again after their worker was lost."),
    "poisoned": ("pylm_messages_poisoned", "Messages not sent again: they took down workers."),
    "late": ("pylm_results_late", "Results that came after their worker was given up."),
}


def _prometheus() -> Any:
    try:
        return importlib.import_module("prometheus_client")
    except ImportError as exc:
        raise ImportError(MISSING) from exc


#: Where a bare port binds: the endpoint is unauthenticated and shows
#: worker ids and method names, so other hosts see it only when asked for
#: (``"0.0.0.0:PORT"`` or ``"HOST:PORT"``).
DEFAULT_HOST = "127.0.0.1"


def parse_metrics_address(value: Union[int, str]) -> Tuple[str, int]:
    """(host, port) of ``metrics_port``: a port (on DEFAULT_HOST, the
    loopback interface) or ``"HOST:PORT"``."""
    if isinstance(value, int):
        return DEFAULT_HOST, value
    host, sep, port = str(value).rpartition(":")
    try:
        return (host.strip("[]") if sep and host else DEFAULT_HOST), int(port)
    except ValueError:
        raise ValueError("metrics_port must be a port or 'HOST:PORT', not %r" % (value,)) from None


class _StatsCollector:
    """A prometheus_client collector reading a server's live statistics."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def collect(self) -> Iterator[Any]:
        core = importlib.import_module("prometheus_client.core")
        stats: Dict[str, Any] = self.server.live_stats()
        name = str(stats["name"])

        def family(kind: Any, metric: str, text: str, labels: Tuple[str, ...] = ()) -> Any:
            return kind(metric, text, labels=("server",) + labels)

        counters = dict(COUNTERS)
        if "workers" in stats:
            counters.update(POOL_COUNTERS)
        for field, (metric, text) in counters.items():
            f = family(core.CounterMetricFamily, metric, text)
            f.add_metric([name], stats.get(field, 0))
            yield f
        up = family(core.GaugeMetricFamily, "pylm_uptime_seconds", "Seconds the server has served.")
        up.add_metric([name], stats["uptime_s"])
        yield up
        if "methods" in stats:
            calls = family(core.CounterMetricFamily, "pylm_method_calls",
                           "Calls of each method.", ("method",))
            errors = family(core.CounterMetricFamily, "pylm_method_errors",
                            "Calls of each method that raised.", ("method",))
            for method, counts in sorted(stats["methods"].items()):
                calls.add_metric([name, method], counts["calls"])
                errors.add_metric([name, method], counts["errors"])
            yield calls
            yield errors
        if "workers" in stats:
            yield from self._workers(core, family, name, stats)

    @staticmethod
    def _workers(core: Any, family: Any, name: str, stats: Dict[str, Any]) -> Iterator[Any]:
        connected = family(core.GaugeMetricFamily, "pylm_workers", "Workers connected now.")
        connected.add_metric([name], len(stats["workers"]))
        queued = family(core.GaugeMetricFamily, "pylm_messages_queued",
                        "Messages waiting for a worker.")
        queued.add_metric([name], stats["queued"])
        in_flight = family(core.GaugeMetricFamily, "pylm_worker_in_flight",
                           "Messages on each worker, not finished.", ("worker",))
        done = family(core.CounterMetricFamily, "pylm_worker_done",
                      "Messages each worker finished.", ("worker",))
        seen = family(core.GaugeMetricFamily, "pylm_worker_last_seen_seconds",
                      "Seconds since each worker was last heard from.", ("worker",))
        for worker in stats["workers"]:
            in_flight.add_metric([name, worker["id"]], worker["in_flight"])
            done.add_metric([name, worker["id"]], worker["done"])
            seen.add_metric([name, worker["id"]], worker["last_seen_s"])
        yield from (connected, queued, in_flight, done, seen)


class MetricsServer:
    """The HTTP endpoint of one server's metrics (``GET /metrics``), in a
    thread of prometheus_client, from start() to close()."""

    def __init__(self, server: Any, address: Union[int, str]) -> None:
        self.host, self.port = parse_metrics_address(address)
        prometheus = _prometheus()          # ImportError now, not at start()
        self.registry = prometheus.CollectorRegistry(auto_describe=False)
        self.registry.register(_StatsCollector(server))
        self._httpd: Optional[Any] = None
        self._thread: Optional[Any] = None

    def start(self) -> None:
        """Bind and serve (OSError when the port is taken)."""
        self._httpd, self._thread = _prometheus().start_http_server(
            self.port, addr=self.host, registry=self.registry)

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            if self._thread is not None:
                self._thread.join(10)
            self._httpd = self._thread = None
