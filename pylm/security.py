"""CURVE encryption and ZAP authentication for pylm's sockets
(shared/API.md, "Security").

Keys are ZeroMQ certificates, as ``zmq.auth.create_certificates`` writes
them: ``NAME.key`` holds the public key, ``NAME.key_secret`` both keys.
Generate them before serving (libzmq issue 4241: key generation while
other contexts run has aborted processes).

What is here, each written once:

- :class:`Security`: the three settings (``secret_key=``, ``server_key=``,
  ``authorized_keys=``, or the ``PYLM_*`` environment variables) of one
  server, worker or client, resolved and loaded at construction, and the
  socket options that make a socket a CURVE server (:meth:`Security.serve`)
  or client (:meth:`Security.connect`).  ``pylm._runtime.Runtime.socket``
  applies them to every bound or connected socket of a server; clients and
  the cache client call them on their own sockets.
- the ZAP side: one pyzmq ``ThreadAuthenticator`` per process (libzmq has
  one ZAP endpoint per context, ``inproc://zeromq.zap.01``), shared by the
  CURVE servers of the process and counted, so that it stops with the last
  one (:func:`zap_acquire`, :func:`zap_release`); each server registers a
  provider for its own ZAP domain: :class:`AuthorizedKeys` (a directory of
  public keys, re-read when it changes) or :class:`AnyKey`.
- :class:`Refusals`: refused handshakes, counted from socket monitors
  (``stats['refused']``) and logged at a limited rate.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import TYPE_CHECKING, Callable, Dict, FrozenSet, List, Optional, Set, Tuple, Union

import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from pylm._context import context

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

    #: ZeroMQ sockets as pyzmq makes them (annotations only).
    Socket = zmq.Socket[bytes]

__all__ = ["generate_keys", "Security", "AuthorizedKeys", "AnyKey", "Refusals",
           "ENV_SECRET_KEY", "ENV_SERVER_KEY", "ENV_AUTHORIZED_KEYS"]

#: A key file or directory as the keywords take it: a path (str or
#: os.PathLike); None falls back to the environment variable.
KeyPath = Optional[Union[str, "os.PathLike[str]"]]
#: Environment variables that stand in for the keywords (an explicit
#: keyword wins), as ipyparallel's ``IPP_CURVE_*``.
ENV_SECRET_KEY = "PYLM_SECRET_KEY"
ENV_SERVER_KEY = "PYLM_SERVER_KEY"
ENV_AUTHORIZED_KEYS = "PYLM_AUTHORIZED_KEYS"

#: Seconds after which an authorized-keys directory is read again even if
#: its modification time did not change (a key file rewritten in place).
RELOAD_INTERVAL = 1.0
#: At most one refusal warning per this many seconds (per server).
REFUSAL_LOG_INTERVAL = 10.0
#: Monitor events that mean a peer was refused at the handshake: a plain
#: peer (mechanism mismatch) or garbage (PROTOCOL), a wrong server key
#: (crypto failure: PROTOCOL too, or NO_DETAIL), a ZAP denial (AUTH), a
#: peer gone mid-handshake (NO_DETAIL).  libzmq 4.3.5 drops a peer that
#: looks like ZMTP 1.0 without any of them: such garbage is not counted.
REFUSAL_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                  | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


def generate_keys(directory: Union[str, os.PathLike[str]], name: str) -> Tuple[str, str]:
    """Write a new key pair, ``name.key`` (public) and ``name.key_secret``
    (secret, readable by its owner only) in `directory` (made if missing).

    :returns: ``(public_path, secret_path)``
    :raises ValueError: `name` is empty or holds a path separator
    :raises FileExistsError: a key of that name is already there (keys are
        never overwritten: peers may trust the old one)
    """
    if not name or os.sep in name or (os.altsep and os.altsep in name):
        raise ValueError("a key name must be a plain file name, not %r" % (name,))
    os.makedirs(directory, exist_ok=True)
    public = os.path.join(directory, name + ".key")
    secret = os.path.join(directory, name + ".key_secret")
    for path in (public, secret):
        if os.path.exists(path):
            raise FileExistsError("%s exists; remove it first to make a new key" % path)
    public, secret = zmq.auth.create_certificates(directory, name)
    os.chmod(secret, 0o600)
    return public, secret


# -- settings -----------------------------------------------------------------

def _setting(value: KeyPath, variable: str) -> Optional[str]:
    """The keyword's value, else the environment variable's (None when
    neither is set or the variable is empty)."""
    if value is None:
        value = os.environ.get(variable) or None
    return None if value is None else os.fspath(value)


def _load(path: str, what: str, need_secret: bool = False) -> Tuple[bytes, Optional[bytes]]:
    """``(public, secret)`` from the certificate at `path`; errors name the
    file and the keyword it came from."""
    if not os.path.isfile(path):
        raise FileNotFoundError("%s: no key file %s" % (what, path))
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        raise ValueError("%s: %s is no ZeroMQ certificate: %s" % (what, path, exc)) from None
    if need_secret and secret is None:
        raise ValueError("%s: %s holds no secret key (give the .key_secret file)"
                         % (what, path))
    return public, secret


class Security:
    """The CURVE settings of one server, worker or client, resolved once.

    Make it with :meth:`for_server` or :meth:`for_client`; without keys
    (keywords or environment) nothing is enabled and sockets stay plain
    (pylm 0.14's wire).

    :ivar serving: bound sockets serve CURVE (a secret key was given)
    :ivar server_key: public key of the server connected to (None: plain)
    :ivar authorized_keys: directory of the public keys a server accepts
        (None: any key, encryption only)
    :ivar domain: the ZAP domain of this server's sockets, unique to it
    """

    def __init__(self, public: Optional[bytes] = None, secret: Optional[bytes] = None,
                 server_key: Optional[bytes] = None, authorized_keys: Optional[str] = None,
                 serving: bool = False) -> None:
        self.public = public
        self.secret = secret
        self.server_key = server_key
        self.authorized_keys = authorized_keys
        self.serving = serving
        self.domain = "pylm-%s" % uuid.uuid4().hex

    @classmethod
    def for_server(cls, secret_key: KeyPath = None, server_key: KeyPath = None,
                   authorized_keys: KeyPath = None) -> Security:
        """Settings of a server: it serves CURVE with `secret_key`, accepts
        the keys in `authorized_keys`, and connects (a Pipeline's, Sink's
        or Hub's subscription, a part's connection) to a server whose
        public key is `server_key`."""
        secret_key = _setting(secret_key, ENV_SECRET_KEY)
        server_key = _setting(server_key, ENV_SERVER_KEY)
        authorized_keys = _setting(authorized_keys, ENV_AUTHORIZED_KEYS)
        public = secret = None
        if secret_key is not None:
            public, secret = _load(secret_key, "secret_key", need_secret=True)
        if authorized_keys is not None:
            if secret is None:
                raise ValueError("authorized_keys=%s needs a secret_key: only a CURVE server "
                                 "checks its peers' keys" % authorized_keys)
            if not os.path.isdir(authorized_keys):
                raise FileNotFoundError("authorized_keys: no directory %s" % authorized_keys)
        server = _load(server_key, "server_key")[0] if server_key is not None else None
        if server is not None and secret is None:
            public, secret = zmq.curve_keypair()
        return cls(public, secret, server, authorized_keys, serving=secret_key is not None)

    @classmethod
    def for_client(cls, secret_key: KeyPath = None, server_key: KeyPath = None) -> Security:
        """Settings of a client or worker: it connects to the server whose
        public key is `server_key`, as `secret_key` (without it: a key pair
        made now, for servers that accept any key)."""
        secret_key = _setting(secret_key, ENV_SECRET_KEY)
        server_key = _setting(server_key, ENV_SERVER_KEY)
        if server_key is None:
            if secret_key is not None:
                raise ValueError("secret_key=%s without a server_key: give the public key "
                                 "of the server to connect to" % secret_key)
            return cls()
        server = _load(server_key, "server_key")[0]
        if secret_key is not None:
            public, secret = _load(secret_key, "secret_key", need_secret=True)
        else:
            public, secret = zmq.curve_keypair()
        return cls(public, secret, server)

    @property
    def enabled(self) -> bool:
        return self.serving or self.server_key is not None

    def serve(self, sock: Socket) -> None:
        """Make `sock` (not yet bound) a CURVE server in this server's ZAP
        domain."""
        assert self.public is not None and self.secret is not None, "not a CURVE server"
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt_string(zmq.ZAP_DOMAIN, self.domain)

    def connect(self, sock: Socket) -> None:
        """Make `sock` (not yet connected) a CURVE client of the server
        whose public key is `server_key`."""
        assert self.server_key is not None and self.public is not None \
            and self.secret is not None, "no server key to connect with"
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)

    def provider(self, on_refused: Optional[Callable[[str], None]] = None
                 ) -> Union[AnyKey, AuthorizedKeys]:
        """The ZAP credentials provider of this server's domain;
        `on_refused(text)` hears who was refused (key and address)."""
        if self.authorized_keys is None:
            return AnyKey()
        return AuthorizedKeys(self.authorized_keys, on_refused=on_refused)


def is_inproc(address: str) -> bool:
    return address.startswith("inproc://")


# -- ZAP ------------------------------------------------------------------------

class AnyKey:
    """ZAP provider of a CURVE server without authorized_keys: libzmq asks
    the process's ZAP handler about every CURVE handshake, and every key
    is accepted (encryption only)."""

    def callback(self, domain: str, key: bytes) -> bool:
        return True


class AuthorizedKeys:
    """ZAP provider that accepts the public keys found in `directory`.

    The directory is read again when its modification time changed (a key
    file added or removed) and at least every RELOAD_INTERVAL seconds
    while handshakes come (a file rewritten in place), so that a removed
    key refuses its peer's next connection without a restart.  A missing
    or unreadable directory accepts nobody.
    """

    def __init__(self, directory: str, logger: Optional[logging.Logger] = None,
                 on_refused: Optional[Callable[[str], None]] = None) -> None:
        self.directory = directory
        self.logger = logger or logging.getLogger("pylm.security")
        self.on_refused = on_refused
        self._keys: FrozenSet[bytes] = frozenset()
        self._mtime: Optional[int] = None
        self._read_at = -RELOAD_INTERVAL
        self._reload()

    def _reload(self) -> None:
        mtime: Optional[int]
        try:
            mtime = os.stat(self.directory).st_mtime_ns
            keys = frozenset(zmq.auth.load_certificates(self.directory))
        except (OSError, ValueError) as exc:
            self.logger.error("authorized keys at %s unreadable (nobody is accepted): %s",
                              self.directory, exc)
            mtime, keys = None, frozenset()
        self._keys, self._mtime, self._read_at = keys, mtime, time.monotonic()

    def _fresh(self) -> FrozenSet[bytes]:
        mtime: Optional[int]
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except OSError:
            mtime = None
        if mtime != self._mtime or time.monotonic() - self._read_at >= RELOAD_INTERVAL:
            self._reload()
        return self._keys

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self._fresh():
            return True
        if self.on_refused is not None:
            self.on_refused("key %s from %s" % (key.decode("ascii", "replace"),
                                                _zap.peer or "an unknown address"))
        return False


class _Zap:
    """The process's one ThreadAuthenticator, started by the first CURVE
    server and stopped (its thread joined) when the last one stops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._auth: Optional[ThreadAuthenticator] = None
        self._domains: Set[str] = set()
        #: address of the peer the authenticator thread is checking
        self.peer: Optional[str] = None

    def acquire(self, domain: str, provider: Union[AnyKey, AuthorizedKeys]) -> None:
        with self._lock:
            if self._auth is None:
                auth = self._authenticator()
                auth.start()
                self._auth = auth
            self._auth.configure_curve_callback(domain, provider)
            self._domains.add(domain)

    def _authenticator(self) -> ThreadAuthenticator:
        # imported here: it imports asyncio, which plain servers never need
        from zmq.auth.thread import ThreadAuthenticator

        zap = self

        class Authenticator(ThreadAuthenticator):
            """Records the address of the peer being checked (frame 4 of a
            ZAP request) for the providers' refusal notes."""

            async def handle_zap_message(self, msg: List[bytes]) -> None:
                zap.peer = msg[3].decode("utf-8", "replace") if len(msg) > 3 else None
                await super().handle_zap_message(msg)

        return Authenticator(context(), log=logging.getLogger("pylm.security.zap"))

    def release(self, domain: str) -> None:
        with self._lock:
            if domain not in self._domains:
                return
            self._domains.discard(domain)
            auth = self._auth
            assert auth is not None     # a domain is held only while it runs
            auth.credentials_providers.pop(domain, None)
            if not self._domains:
                self._auth = None
                auth.stop()

    @property
    def running(self) -> bool:
        with self._lock:
            return self._auth is not None and self._auth.is_alive()


_zap = _Zap()
zap_acquire = _zap.acquire
zap_release = _zap.release


def zap_running() -> bool:
    """True while the process's authenticator thread runs (for tests)."""
    return _zap.running


# -- refused handshakes ------------------------------------------------------

_REASONS: Dict[int, str] = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol error (a plain peer, a wrong server "
                                         "key or garbage)",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "key not authorized",
}


class Refusals:
    """Handshakes a server refused: ``count`` (kept across starts, its
    ``stats['refused']``) and a WARNING at most every
    REFUSAL_LOG_INTERVAL seconds saying how many since the last one."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.count = 0
        self._pending = 0
        self._last: Tuple[str, str] = ("", "")
        self._logged_at: Optional[float] = None
        self._who: Optional[str] = None

    def note(self, who: str) -> None:
        """Who the ZAP provider just refused (its key and address), told
        in the next report (called from the authenticator's thread)."""
        self._who = who

    def refused(self, event: int, endpoint: Union[bytes, str], now: float) -> None:
        self.count += 1
        self._pending += 1
        reason = _REASONS.get(event, "handshake failed")
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and self._who:
            reason = "%s: %s" % (reason, self._who)
        self._last = (reason, endpoint.decode("utf-8", "replace") if isinstance(endpoint, bytes)
                      else str(endpoint))
        if self._logged_at is None or now - self._logged_at >= REFUSAL_LOG_INTERVAL:
            self.flush(now)

    def flush(self, now: float) -> None:
        if self._pending:
            self.logger.warning("refused %d handshake(s) since the last report (last: %s, on %s)",
                                self._pending, *self._last)
            self._pending = 0
            self._logged_at = now

    def due(self, now: float) -> Optional[float]:
        """Seconds until pending refusals may be logged (None: nothing pending)."""
        if not self._pending:
            return None
        assert self._logged_at is not None    # the first refusal is logged at once
        return max(0.0, self._logged_at + REFUSAL_LOG_INTERVAL - now)

    def watch(self, monitors: List[Socket], added: Socket, control: Socket) -> None:
        """Read the monitor sockets (list `monitors`; `added`, a PULL, is
        readable when one was appended) until `control` is readable."""
        poller = zmq.Poller()
        poller.register(control, zmq.POLLIN)
        poller.register(added, zmq.POLLIN)
        watched = 0
        try:
            while True:
                while watched < len(monitors):
                    poller.register(monitors[watched], zmq.POLLIN)
                    watched += 1
                due = self.due(time.monotonic())
                events = dict(poller.poll(None if due is None else int(due * 1000) + 1))
                if control in events:
                    return
                if added in events:
                    while True:
                        try:
                            added.recv(zmq.DONTWAIT)
                        except zmq.Again:
                            break
                now = time.monotonic()
                for mon in monitors[:watched]:
                    if mon in events:
                        self._drain(mon, now)
                if self.due(now) == 0:
                    self.flush(now)
        finally:
            self.flush(time.monotonic())

    def _drain(self, mon: Socket, now: float) -> None:
        while True:
            try:
                event = recv_monitor_message(mon, zmq.DONTWAIT)
            except zmq.Again:
                return
            self.logger.debug("monitor event %s (%s) on %s", event["event"], event["value"],
                              event["endpoint"])
            if event["event"] & REFUSAL_EVENTS:
                self.refused(event["event"], event["endpoint"], now)
