"""DictDB: the in-memory store behind every server's cache."""

import threading
import uuid
from typing import Dict, Optional

__all__ = ["DictDB"]


class DictDB:
    """A thread-safe dictionary of str keys to bytes values.

    The method names and argument order are pylm 0.14's: ``set`` takes the
    value first and returns the key (a new UUID when none is given).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._store: Dict[str, bytes] = {}

    def get(self, key: str) -> Optional[bytes]:
        """The value stored under key, or None."""
        with self._lock:
            return self._store.get(key)

    def set(self, value: bytes, key: Optional[str] = None) -> str:
        """Store value under key (a new UUID4 string when key is falsy);
        returns the key."""
        if not key:
            key = str(uuid.uuid4())
        with self._lock:
            self._store[key] = value
        return key

    def delete(self, key: str) -> str:
        """Remove key if present; returns the key."""
        with self._lock:
            self._store.pop(key, None)
        return key

    def clean(self, prefix: str = "") -> None:
        """Remove every key that starts with prefix."""
        with self._lock:
            for key in [k for k in self._store if k.startswith(prefix)]:
                del self._store[key]

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._store

    def __len__(self) -> int:
        with self._lock:
            return len(self._store)
