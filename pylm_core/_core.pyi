# Type stubs of the pylm_core._core extension (the public part).
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Literal, Optional, Sequence,
                    Tuple, TypeVar, Union)

PING_PREFIX: bytes
WELCOME: bytes
BATCH_MARK: bytes
STAGE_MARK: bytes
PAYLOAD_MARK: bytes
HB_SUFFIX: bytes
W_RESET: bytes
W_BEAT_: bytes
MAX_LOST_: int
LEND_MIN_: int
WINDOW_BYTES_: int
MAX_MESSAGE_SIZE_: int
PUB_HWM_: int
WORKER_HWM_: int
IN_PLAIN_: int
IN_TOPIC_: int
OUT_TOPIC_: int
OUT_PLAIN_: int
OUT_WORKER_: int

def load_libzmq(path: str) -> None: ...
def zmq_version() -> str: ...

class Frame:
    def __len__(self) -> int: ...
    def bytes(self) -> bytes: ...

class PalmMessage:
    pipeline: str
    client: str
    stage: int
    function: str
    cache: str
    payload: Any
    error: str
    @property
    def payload_view(self) -> memoryview: ...
    def __init__(self, *, pipeline: Optional[str] = ..., client: Optional[str] = ...,
                 stage: Optional[int] = ..., function: Optional[str] = ...,
                 cache: Optional[str] = ..., payload: Any = ...,
                 error: Optional[str] = ...) -> None: ...
    def SerializeToString(self, **kwargs: Any) -> bytes: ...
    def ParseFromString(self, data: Any) -> int: ...
    @classmethod
    def FromString(cls, data: Any) -> "PalmMessage": ...
    def ByteSize(self) -> int: ...
    def Clear(self) -> None: ...
    def CopyFrom(self, other: "PalmMessage") -> None: ...

ACK: bytes
DRAIN_MS: int
HOLD_REPLIES: int
HOLD_SECONDS: float
HOLD_TICK_MS_: int

class Subscriptions:
    """What subscribes to one XPUB, and the replies held for it."""
    held_dropped: int
    held_sent: int
    def __init__(self, max_held: int = ..., hold_seconds: float = ...) -> None: ...
    def counters(self) -> Dict[str, int]: ...
    def note(self, frame: bytes) -> None: ...
    def offer(self, topic: bytes, data: bytes, legacy: bool = ...) -> bool: ...
    def on_timer(self) -> None: ...
    def released(self) -> List[Tuple[bytes, bytes]]: ...

def is_legacy_reply(data: Any) -> bool: ...

class Part:
    """A part of a server: handlers over sockets the Router polls."""
    target: Optional["Part"]
    block: bool
    def _idle(self) -> bool: ...
    def _on_tick(self) -> Any: ...
    def counters(self) -> dict: ...
    def details(self) -> dict: ...

_P = TypeVar("_P", bound=Part)

class Router:
    """The one poll loop of every pylm server, and its routing table."""
    routed: int
    messages: int
    def add(self, part: _P, target: Optional[Part] = ...) -> _P: ...
    def reset(self) -> None: ...
    def run(self, control: Any, wakeup_fd: int = ..., drain_ms: int = ...) -> None: ...
    def counters(self) -> dict: ...
    def details(self) -> dict: ...
    def route(self, part: Part, data: Any, exchange: Any = ...) -> Optional[bytes]: ...
    def backlog(self, part: Part, over: bool) -> None: ...
    def backlogged_for(self, part: Part) -> bool: ...
    def _watch(self, sock: Any, handler: Callable[[int], Any], events: int, *,
               owner: Optional[Part] = ..., inbound: bool = ...) -> int: ...
    def _want(self, sock: Any, flag: int, on: bool) -> None: ...
    def _tick(self, part: Part, every_ms: int) -> None: ...
    def _pause(self, sock: Any, reason: Any) -> None: ...
    def _resume(self, sock: Any, reason: Any) -> None: ...
    def _paused(self, sock: Any) -> bool: ...
    def _post(self, fn: Callable, *args: Any) -> None: ...

class Executor(Part):
    limit: int
    processed: int
    bad: int
    failed: int
    sent: int
    pings: int
    def __init__(self, inbound: Sequence[Tuple[Any, int]], out: Any, out_kind: int,
                 name: Optional[str], methods: dict, *,
                 pipelined: bool = ..., stream_hook: Optional[Callable] = ...,
                 error_hook: Optional[Callable] = ..., bad_hook: Optional[Callable] = ...,
                 array_parts: Optional[Callable] = ..., mux: bool = ..., limit: int = ...,
                 credit: int = ..., batch_bytes: int = ..., hold_replies: int = ...,
                 hold_seconds: float = ...) -> None: ...

class Publisher(Part):
    sent: int
    bad: int
    errors: int
    pings: int
    def __init__(self, pub: Any, name: str, *, pipelined: bool = ...,
                 gather: Optional[Callable] = ..., stream_hook: Optional[Callable] = ...,
                 bad_hook: Optional[Callable] = ..., send_tracebacks: bool = ...,
                 hold_replies: int = ..., hold_seconds: float = ...) -> None: ...

class WorkerPool(Part):
    bad: int
    to_legacy: int
    to_workers: int
    workers_lost: int
    requeued: int
    poisoned: int
    late: int
    workers_connected: int
    queued: int
    in_flight: int
    def __init__(self, router: Any, wpush: Any, wpull: Any, *,
                 bad_hook: Optional[Callable] = ..., worker_timeout_ms: int = ...) -> None: ...

class Intake(Part):
    received: int
    pings: int
    bad: int
    def __init__(self, inbound: Any, in_kind: int, replies: Publisher, *,
                 scatter: Optional[Callable] = ..., bad_hook: Optional[Callable] = ...) -> None: ...

class ReplyReader:
    pipeline: Optional[bytes]
    call: int
    stale: int
    bad: int
    welcomes: int
    def __init__(self, sub: Any) -> None: ...
    def recv(self, timeout: Optional[float] = ...) -> Tuple[bytes, Optional[str]]: ...
    def recv_until_welcome(self, timeout: Optional[float],
                           welcomes: int) -> Optional[Tuple[bytes, Optional[str]]]: ...
    def round_trip(self, push: Any, pipeline: bytes, client: bytes, function: bytes,
                   cache: bytes, payload: Any, timeout: Optional[float], batch_replies: bool,
                   call: int, welcomes: int
                   ) -> Union[None, Literal[False], Tuple[bytes, Optional[str]]]: ...
    def recv_message(self, timeout: Optional[float] = ...) -> PalmMessage: ...
    def dispatch(self, pending: dict, stream: type, most: int) -> Tuple[int, list, list]: ...

class JobStream(Iterator[Any]):
    def __init__(self, push: Any, reader: ReplyReader, generator: Iterable[Any],
                 pipeline: bytes, client: bytes, function: bytes, cache: bytes,
                 messages: int, *, window: int = ..., batch: bool = ...,
                 timeout: Optional[float] = ..., on_error: Optional[Callable] = ...,
                 call: int = ..., until_answered: bool = ...,
                 batch_bytes: int = ..., resend: bool = ..., skip: Any = ...,
                 window_bytes: int = ...) -> None: ...
    duplicates: int
    resent: int
    def __next__(self) -> Any: ...

STOP_MOST: int
STOP_END: int
STOP_FULL: int

class CallBatch:
    count: int
    def __init__(self, push: Any, pipeline: bytes, client: bytes,
                 batch_bytes: int = ...) -> None: ...
    def add(self, function: bytes, cache: bytes, payload: Any, call: int) -> bool: ...
    def add_from(self, function: bytes, cache: bytes, it: Iterator[Any], call: int,
                 most: int) -> Tuple[int, Any]: ...
    def send(self) -> bool: ...

def release_sent() -> None: ...
def resource_counts() -> dict: ...
def send_call(push: Any, pipeline: bytes, client: bytes, function: bytes, cache: bytes,
              payload: Any, timeout: Optional[float] = ..., batch_replies: bool = ...,
              call: int = ...) -> None: ...

GROUP_CALLS_MAX: int

def check_payloads(payloads: list) -> None: ...

class CallGroup:
    function: bytes
    cache: bytes
    payloads: list
    results: list
    owner: Any
    deadline: float
    key: int
    remaining: int
    failed: int
    def __init__(self, function: bytes, payloads: list, owner: Any = ...,
                 cache: bytes = ...) -> None: ...

class CallTable:
    inflight: int
    stale: int
    busy: int
    def __init__(self, push: Any, reader: ReplyReader, pipeline: bytes, client: bytes, *,
                 window: int = ..., batch: bool = ..., batch_bytes: int = ...,
                 first_key: int = ...) -> None: ...
    def groups_left(self) -> list: ...
    def room(self) -> int: ...
    def add(self, group: CallGroup) -> bool: ...
    def forget(self, group: CallGroup) -> bool: ...
    def pump(self) -> bool: ...
    def receive(self, done: list) -> int: ...
    def wait(self, fd: int, timeout_ms: int, writable: bool) -> int: ...
