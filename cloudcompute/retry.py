"""Every retry policy of cloudcompute, in one place (tenacity).

Each policy sets stop, wait and a retry predicate, and logs before sleeping.
``SLEEP`` is what tenacity sleeps with; unit tests replace it.
"""
from __future__ import annotations

import email.utils
import logging
import socket
import threading
import time
from typing import Any, Callable, Optional

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
    if isinstance(exc, ks_exc.HttpError):
        return getattr(exc, "http_status", None) in TRANSIENT_HTTP
    if isinstance(exc, os_exc.HttpException):
        return getattr(exc, "status_code", None) in TRANSIENT_HTTP
    return isinstance(exc, (ConnectionError, socket.timeout))


def retry_after(exc: Optional[BaseException], cap: float = 30.0) -> Optional[float]:
    """Seconds the server asked us to wait (Retry-After), capped; None if it did not."""
    response = getattr(exc, "response", None)
    value = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(seconds, cap))


class wait_retry_after(tenacity.wait.wait_base):
    """Honour a Retry-After header; otherwise fall back to ``fallback``."""

    def __init__(self, fallback: Any):
        self.fallback = fallback

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        seconds = retry_after(outcome.exception() if outcome is not None else None)
        return self.fallback(retry_state) if seconds is None else seconds


def api_call(attempts: int = 5, max_wait: float = 8.0) -> Any:
    """Retry an idempotent cloud call (GET, DELETE, find) on transient faults."""
    return tenacity.retry(
        stop=tenacity.stop_after_attempt(attempts),
        wait=wait_retry_after(tenacity.wait_random_exponential(multiplier=0.5, max=max_wait)),
        retry=tenacity.retry_if_exception(is_transient_api_error),
        before_sleep=tenacity.before_sleep_log(LOG, logging.WARNING),
        sleep=_sleep,
        reraise=True,
    )


def call(fn: Callable[..., Any], *args: Any, attempts: int = 5, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` under the idempotent API call policy."""
    return api_call(attempts)(fn)(*args, **kwargs)


def create_checked(create: Callable[[], Any], find: Callable[[], Any],
                   attempts: int = 4) -> Any:
    """Run a non-idempotent create; before each retry, look for what an earlier
    attempt may have made (its answer lost) and return that instead."""
    tried: list = []

    def attempt() -> Any:
        if tried:
            existing = find()
            if existing is not None:
                LOG.info("an earlier create attempt had succeeded; using %s",
                         getattr(existing, "id", existing))
                return existing
        tried.append(1)
        return create()

    return tenacity.retry(
        stop=tenacity.stop_after_attempt(attempts),
        wait=wait_retry_after(tenacity.wait_random_exponential(multiplier=0.5, max=4.0)),
        retry=tenacity.retry_if_exception(is_transient_api_error),
        before_sleep=tenacity.before_sleep_log(LOG, logging.WARNING),
        sleep=_sleep,
        reraise=True,
    )(attempt)()


def ssh_connect(deadline: float, is_transient: Callable[[BaseException], bool],
                stop: Optional[threading.Event] = None) -> Any:
    """Retry an SSH connection until ``deadline`` (monotonic) on transient errors,
    or until ``stop`` is set."""
    return tenacity.retry(
        stop=tenacity.stop_after_delay(max(0.0, deadline - time.monotonic()))
        | tenacity.stop_when_event_set(stop or threading.Event()),
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


def task_reexecution(attempts: int, bound: float,
                     is_loss: Callable[[BaseException], bool]) -> tenacity.Retrying:
    """Run a task again after its node was lost (or its payload arrived damaged):
    at most ``attempts`` runs in all, none started after ``bound`` seconds.
    This is the only place where a task is re-executed; tasks are at-least-once."""
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts) | tenacity.stop_after_delay(bound),
        wait=tenacity.wait_exponential(multiplier=0.2, max=2.0) + tenacity.wait_random(0, 0.2),
        retry=tenacity.retry_if_exception(is_loss),
        before_sleep=tenacity.before_sleep_log(LOG, logging.WARNING),
        sleep=_sleep,
        reraise=True,
    )
