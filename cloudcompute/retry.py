"""Every retry policy of cloudcompute, in one place (tenacity).

Each policy sets stop, wait and a retry predicate, and logs before sleeping.
``SLEEP`` is what tenacity sleeps with; unit tests replace it.
"""
from __future__ import annotations

import logging
import socket
import time
from typing import Any, Callable

import tenacity
from keystoneauth1 import exceptions as ks_exc
from openstack import exceptions as os_exc

LOG = logging.getLogger(__name__)


def _sleep(seconds: float) -> None:
    SLEEP(seconds)


SLEEP: Callable[[float], None] = time.sleep

TRANSIENT_HTTP = {408, 409, 429, 500, 502, 503, 504}


def is_transient_api_error(exc: BaseException) -> bool:
    """True for API faults worth retrying on an idempotent call."""
    if isinstance(exc, (ks_exc.ConnectFailure, ks_exc.RetriableConnectionFailure)):
        return True
    if isinstance(exc, os_exc.HttpException):
        return getattr(exc, "status_code", None) in TRANSIENT_HTTP
    return isinstance(exc, (ConnectionError, socket.timeout))


def api_call(attempts: int = 5, max_wait: float = 8.0) -> Any:
    """Retry an idempotent cloud call (GET, DELETE, find) on transient faults."""
    return tenacity.retry(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_random_exponential(multiplier=0.5, max=max_wait),
        retry=tenacity.retry_if_exception(is_transient_api_error),
        before_sleep=tenacity.before_sleep_log(LOG, logging.WARNING),
        sleep=_sleep,
        reraise=True,
    )


def call(fn: Callable[..., Any], *args: Any, attempts: int = 5, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` under the idempotent API call policy."""
    return api_call(attempts)(fn)(*args, **kwargs)


def ssh_connect(deadline: float, is_transient: Callable[[BaseException], bool]) -> Any:
    """Retry an SSH connection until ``deadline`` (monotonic) on transient errors."""
    return tenacity.retry(
        stop=tenacity.stop_after_delay(max(0.0, deadline - time.monotonic())),
        wait=tenacity.wait_exponential(multiplier=0.2, max=2.0)
        + tenacity.wait_random(0, 0.2),
        retry=tenacity.retry_if_exception(is_transient),
        before_sleep=tenacity.before_sleep_log(LOG, logging.DEBUG),
        sleep=_sleep,
        reraise=True,
    )


def transfer(attempts: int = 3,
             is_transient: Callable[[BaseException], bool] = lambda e: True) -> Any:
    """Retry a whole payload transfer (which re-sends from the start)."""
    return tenacity.retry(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=0.5, max=4.0) + tenacity.wait_random(0, 0.3),
        retry=tenacity.retry_if_exception(is_transient),
        before_sleep=tenacity.before_sleep_log(LOG, logging.WARNING),
        sleep=_sleep,
        reraise=True,
    )
