"""Servers built from parts (shared/API.md, "Low-level API").

A :class:`ServerTemplate` holds a :class:`~pylm.parts.core.Router` and the
parts registered with it; ``start()`` serves them all in one loop, in the
calling thread (bypass parts that are HTTP servers add a thread each)::

    server = ServerTemplate()
    server.register_inbound(PullService, "Pull", pull_address, route="WorkerPush")
    server.register_inbound(WorkerPullService, "WorkerPull", worker_pull_address,
                            route="Pub")
    server.register_outbound(WorkerPushService, "WorkerPush", worker_push_address)
    server.register_outbound(PubService, "Pub", pub_address)
    server.register_bypass(CacheService, "Cache", db_address)
    server.preset_cache(name="server", db_address=db_address, ...)
    server.start()
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Dict, Iterator, Set, Type, TypeVar, Union

from pylm._cache import CACHE_MAX_BYTES, CACHE_MAX_ENTRIES, CONFIG_PROTOCOL_KEY, PROTOCOL_PARTS
from pylm._stream import DefaultStream
from pylm.parts.core import Inbound, Outbound, Router
from pylm.parts.services import CacheService, PubService
from pylm.persistence.kv import DictDB
from pylm.security import KeyPath, Security
from pylm_core import PalmMessage

__all__ = ["ServerTemplate", "BaseMaster"]

_In = TypeVar("_In", bound=Inbound)
_Out = TypeVar("_Out", bound=Outbound)


class ServerTemplate:
    """A server made of parts.

    :param logging_level: level of the server's logger; None (the
        default) leaves it to the application, and no handler is ever
        added: configure logging in the application
    :param router_messages: start() returns once this many messages were
        routed (and the ones under way have arrived)
    :param send_tracebacks: keyword-only; when false, the error replies of
        parts carry the exception's type and message but no traceback
        (logged here in full)
    :param cache_max_entries, cache_max_bytes: keyword-only; the bound of
        the cache a CacheService registered here serves (see
        pylm.servers); the keys given to preset_cache() cannot be set or
        deleted by remote requests
    :param secret_key: keyword-only, as on every server (pylm.security):
        every socket the parts bind serves CURVE
    :param server_key: keyword-only; the public key of the server the
        connecting parts connect to
    :param authorized_keys: keyword-only; the directory of accepted keys

    Attributes, as in pylm 0.14: ``cache`` (the DictDB every part gets
    unless registered with its own), ``logger``, ``router``,
    ``inbound_components``, ``outbound_components``, ``bypass_components``
    (name -> part).
    """

    def __init__(self, logging_level: Union[int, str, None] = None,
                 router_messages: int = sys.maxsize, *, send_tracebacks: bool = True,
                 cache_max_entries: int = CACHE_MAX_ENTRIES,
                 cache_max_bytes: int = CACHE_MAX_BYTES, secret_key: KeyPath = None,
                 server_key: KeyPath = None, authorized_keys: KeyPath = None) -> None:
        self.name = ""
        self.logging_level = logging_level
        self.cache = DictDB()
        self.inbound_components: Dict[str, Inbound] = {}
        self.outbound_components: Dict[str, Outbound] = {}
        self.bypass_components: Dict[str, Any] = {}
        self.logger = logging.getLogger("pylm.parts.%s" % type(self).__name__)
        if logging_level is not None:
            self.logger.setLevel(logging_level)
        self.security = Security.for_server(secret_key, server_key, authorized_keys)
        self.router = Router(logger=self.logger, cache=self.cache, messages=router_messages,
                             security=self.security)
        self.router.send_tracebacks = send_tracebacks
        self.cache_max_entries = cache_max_entries
        self.cache_max_bytes = cache_max_bytes
        # what preset_cache() stored: shared with the CacheService parts
        self._protected_keys: Set[str] = set()

    def _check_name(self, name: str) -> None:
        if name in self.inbound_components or name in self.outbound_components or \
                name in self.bypass_components:
            raise ValueError("a part named %r is registered already" % name)

    def register_inbound(self, part: Type[_In], name: str = "", listen_address: str = "",
                         route: str = "", block: bool = False, log: str = "",
                         **kwargs: Any) -> _In:
        """Make ``part(name, listen_address, **kwargs)`` an inbound part.

        :param part: the part class
        :param name: its name in this server
        :param listen_address: its address outside
        :param route: the outbound part its messages go to ('' for none)
        :param block: the part gets back the outbound's feedback (a REP
            part answers its peer with it)
        :param log: logged at DEBUG for each message the part routes
        :returns: the part
        """
        self._check_name(name)
        kwargs.setdefault("cache", self.cache)
        instance = part(name, listen_address, broker_address=self.router.inbound_address,
                        logger=self.logger, **kwargs)
        self.router.register_inbound(name, route=route, block=block, log=log, part=instance)
        self.inbound_components[name] = instance
        return instance

    def register_outbound(self, part: Type[_Out], name: str = "", listen_address: str = "",
                          route: str = "", log: str = "", **kwargs: Any) -> _Out:
        """Make ``part(name, listen_address, **kwargs)`` an outbound part;
        its feedback goes on to the outbound part `route` (once)."""
        self._check_name(name)
        kwargs.setdefault("cache", self.cache)
        instance = part(name, listen_address, broker_address=self.router.outbound_address,
                        logger=self.logger, **kwargs)
        self.router.register_outbound(name, route=route, log=log, part=instance)
        self.outbound_components[name] = instance
        return instance

    def register_bypass(self, part: Any, name: str = "", listen_address: str = "",
                        **kwargs: Any) -> Any:
        """Make ``part(name, listen_address, **kwargs)`` a part served
        beside the routing (CacheService, HttpGateway...)."""
        self._check_name(name)
        kwargs.setdefault("cache", self.cache)
        if isinstance(part, type) and issubclass(part, CacheService):
            kwargs.setdefault("protected_keys", self._protected_keys)
            kwargs.setdefault("cache_max_entries", self.cache_max_entries)
            kwargs.setdefault("cache_max_bytes", self.cache_max_bytes)
        instance = part(name, listen_address, logger=self.logger, **kwargs)
        self.router.register_bypass(name, part=instance)
        self.bypass_components[name] = instance
        return instance

    def preset_cache(self, **kwargs: Union[str, bytes]) -> None:
        """Store each keyword in the cache (str values as UTF-8), for
        clients and workers that find their configuration there.  Remote
        requests cannot set or delete these keys."""
        self._protected_keys.update(kwargs)
        for key, value in kwargs.items():
            self.cache.set(value.encode("utf-8") if isinstance(value, str) else value, key)

    def start(self) -> None:
        """Serve every part until `router_messages` were routed or stop()
        is called; a part failing stops the server and is raised here.

        A server that publishes through a PubService tells our clients so
        in its cache (``pylm_protocol``), unless preset_cache() said
        otherwise: they then wait for the XPUB's welcome instead of pylm
        0.14's fixed half second."""
        if self.cache.get(CONFIG_PROTOCOL_KEY) is None and any(
                isinstance(part, PubService) for part in self.outbound_components.values()):
            self.cache.set(PROTOCOL_PARTS, CONFIG_PROTOCOL_KEY)
        self.logger.info("starting %d inbound, %d outbound and %d bypass parts",
                         len(self.inbound_components), len(self.outbound_components),
                         len(self.bypass_components))
        self.router.start()

    def stop(self) -> None:
        """Make start() return; safe from any thread or signal handler."""
        self.router.stop()

    @property
    def refused(self) -> int:
        """Handshakes refused at the parts' CURVE sockets (pylm.security)."""
        return self.router.refused

    @property
    def ready(self) -> threading.Event:
        """A threading.Event set while start() serves, once every part's
        socket is bound (for tests and supervisors)."""
        return self.router.ready


class BaseMaster(DefaultStream):
    """The hooks of a master, as a mixin: ``scatter`` and ``gather``
    (generators), ``handle_stream`` and ``change_payload``.  Parts call
    their own hooks: a server that wants its parts to use these passes
    them on explicitly, e.g. ``self.inbound_components['Pull'].scatter =
    self.scatter`` before start()."""

    @staticmethod
    def change_payload(message: PalmMessage, new_payload: bytes) -> PalmMessage:
        """Set the message's payload; returns the message."""
        message.payload = new_payload
        return message

    def scatter(self, message: PalmMessage) -> Iterator[PalmMessage]:
        """Messages to send on for one inbound message."""
        yield message

    def gather(self, message: PalmMessage) -> Iterator[PalmMessage]:
        """Messages to send on for one result."""
        yield message
