"""Progress bars of jobs (``Client.job(..., progress=True)``, ``pylm job
--progress``): tqdm, on stderr.  tqdm is an optional dependency (the extra
``pylm[progress]``), imported only when a bar is asked for."""

import importlib
import sys
from typing import Any, Optional

__all__ = ["progress_bar", "job_total"]

MISSING = ("a progress bar needs tqdm, an optional dependency of pylm: "
           "pip install 'pylm[progress]' (or pip install tqdm)")


def progress_bar(total: Optional[int] = None, desc: Optional[str] = None) -> Any:
    """A tqdm bar on stderr counting replies; ImportError saying what to
    install when tqdm is missing."""
    try:
        tqdm = importlib.import_module("tqdm").tqdm
    except ImportError as exc:
        raise ImportError(MISSING) from exc
    return tqdm(total=total, desc=desc, unit="msg", file=sys.stderr, dynamic_ncols=True)


def job_total(messages: int, payloads: Any, unbounded: int) -> Optional[int]:
    """The bar's total: `messages` when the caller gave it, else len() of
    the payloads when they have one, else None (a bar without an end)."""
    if messages != unbounded:
        return messages
    try:
        return len(payloads)
    except TypeError:
        return None
