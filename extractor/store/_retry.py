"""The store's one retry layer: a read that meets a commit in flight is tried again.

A writer keeps the file open for milliseconds per batch, and a reader that opens it then can
see half-written HDF5 metadata (h5py raises OSError, RuntimeError, KeyError or ValueError). A
few short retries give a consistent view; a file that stays unreadable gets a clear error.

Read methods call each other (``read`` resolves through ``feature_sets``, ``info`` gathers
five reads): only the outermost decorated call retries, so the retries never multiply.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from featurebank.errors import FeaturebankError

__all__ = ["DELAYS", "retry_read"]

# Seconds to wait before each retry: 0.5 s in all, far more than a commit keeps the file open.
DELAYS = (0.05, 0.1, 0.15, 0.2)
_TRANSIENT = (OSError, RuntimeError, KeyError, ValueError)
_inside = threading.local()  # per thread: is a retried read already on the stack?

F = TypeVar("F", bound=Callable[..., Any])


def retry_read(method: F) -> F:
    """Retry ``method(self, ...)`` (a read of the store at ``self.path``) on transient errors.

    A :class:`FeaturebankError` (a foreign file, a newer format, no such feature set) is an
    answer, not a race: it is raised at once.
    """
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(_inside, "active", False):
            return method(self, *args, **kwargs)
        _inside.active = True
        try:
            for delay in (*DELAYS, None):
                try:
                    return method(self, *args, **kwargs)
                except FeaturebankError:
                    raise
                except _TRANSIENT as exc:
                    if delay is None:
                        raise FeaturebankError(
                            f"cannot read store {self.path} ({exc}); if a writer is running, "
                            "try again when it is done") from exc
                    time.sleep(delay)
        finally:
            _inside.active = False
    return wrapper  # type: ignore[return-value]
