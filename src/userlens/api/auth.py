"""NCP API Gateway authentication for the NCLUE family.

Each request carries x-ncp-apigw-timestamp (ms), x-ncp-iam-access-key and x-ncp-apigw-signature-v2.
The signature covers METHOD, the path with its query string exactly as sent, the timestamp and the
access key; it is compared in constant time. Any failure is 401 / 10100 ACCESS_DENIED, and the
details never echo the secret or the expected signature.
"""

from __future__ import annotations

import threading
import time

import anyio
from fastapi import Request

from userlens.accounts.service import MISS
from userlens.accounts.signature import MAX_SKEW_MS, ReplayCache, verify_signature
from userlens.api.errors import ApiError, family_of, nclue_error

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _denied(details: str):
    return nclue_error("ACCESS_DENIED", details)


async def nclue_account(request: Request) -> str:
    """FastAPI dependency: the account id of a correctly signed request. Async so that a key in the
    accounts' cache costs no thread hop; the database is only read off the event loop."""
    h = request.headers
    timestamp = h.get("x-ncp-apigw-timestamp")
    access_key = h.get("x-ncp-iam-access-key")
    signature = h.get("x-ncp-apigw-signature-v2")
    if not (timestamp and access_key and signature):
        raise _denied("x-ncp-apigw-timestamp, x-ncp-iam-access-key and x-ncp-apigw-signature-v2 are required")
    if not timestamp.isdigit():
        raise _denied("x-ncp-apigw-timestamp must be milliseconds since the epoch")
    if abs(int(timestamp) - int(time.time() * 1000)) > MAX_SKEW_MS:
        raise _denied("x-ncp-apigw-timestamp differs from the server time by more than 5 minutes")
    services = request.app.state.services
    found = services.accounts.lookup_cached(access_key)
    if found is MISS:
        found = await anyio.to_thread.run_sync(services.accounts.lookup, access_key)
    if found is None:
        raise _denied("unknown or revoked access key")
    account_id, secret = found
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    uri = raw_path.decode("latin-1")
    query = request.scope.get("query_string", b"").decode("latin-1")
    if query:
        uri = f"{uri}?{query}"
    if not verify_signature(signature, request.method, uri, timestamp, access_key, secret):
        raise _denied("signature does not match (signed: METHOD, path with query, timestamp, access key)")
    if request.method in MUTATING and not _replays(request).first_use(access_key, signature, int(timestamp), int(time.time() * 1000)):
        raise _denied("this signed request was already received (replay); sign every request with a fresh timestamp")
    check_rate(request, f"nclue:{access_key}")
    request.state.account_id = account_id
    return account_id


def _replays(request: Request) -> ReplayCache:
    state = request.app.state
    cache = getattr(state, "nclue_replays", None)
    if cache is None:
        with _STATE_LOCK:
            cache = getattr(state, "nclue_replays", None) or ReplayCache()
            state.nclue_replays = cache
    return cache


_STATE_LOCK = threading.Lock()


class RateLimiter:
    """A token bucket per API key: `rate` requests per second on average, bursts of `burst`.

    Keyed on the authenticated key (NCLUE access key, AEP client id), so unsigned requests naming
    someone else's key cannot spend that key's budget. In-process, like the replay cache."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, max(1, burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill, monotonic)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 when the request may go on, else the seconds until a token is available."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


def rate_limited(request: Request, retry_after: float) -> ApiError:
    """429 in the caller's family: NCLUE 19429 TOO_MANY_REQUESTS; AEP's documented bodies (an array
    for profile access, the RequestRateTooLarge problem otherwise)."""
    seconds = max(1, int(retry_after + 0.999))
    headers = {"Retry-After": str(seconds)}
    if family_of(request) == "nclue":
        err = nclue_error("TOO_MANY_REQUESTS", f"more than the per-key rate limit; retry after {seconds} s")
        err.headers = headers
        return err
    if request.url.path.startswith("/data/core/ups/access"):
        body = [{"message": "Too many requests", "cause": '{"Errors":["Request rate is large"]}', "retryAfterMs": str(int(retry_after * 1000) or 1), "statusCode": "429"}]
        return ApiError(429, body, headers)
    return ApiError(429, {"title": "RequestRateTooLarge", "status": 429, "detail": "Request rate is large. Please try again later."}, headers)


def check_rate(request: Request, key: str) -> None:
    """Refuses the request with 429 when the key is over USERLENS_RATE_LIMIT_PER_SECOND (0: off)."""
    settings = request.app.state.services.settings
    rate = settings.rate_limit_per_second
    if not rate or rate <= 0:
        return
    state = request.app.state
    limiter = getattr(state, "rate_limiter", None)
    if limiter is None or limiter.rate != rate:
        with _STATE_LOCK:
            limiter = getattr(state, "rate_limiter", None)
            if limiter is None or limiter.rate != rate:
                limiter = state.rate_limiter = RateLimiter(rate, settings.rate_limit_burst)
    wait = limiter.take(key)
    if wait > 0:
        raise rate_limited(request, wait)
