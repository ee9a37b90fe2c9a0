"""NCP API Gateway signature v2, shared by the server (verify) and the client (sign).

message   = METHOD + " " + URI(with ?query) + "\n" + TIMESTAMP + "\n" + ACCESS_KEY
signature = Base64(HMAC-SHA256(secret, message))
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading

MAX_SKEW_MS = 5 * 60 * 1000


def make_signature(method: str, uri: str, timestamp: str, access_key: str, secret_key: str) -> str:
    message = f"{method.upper()} {uri}\n{timestamp}\n{access_key}"
    return base64.b64encode(hmac.new(secret_key.encode(), message.encode(), hashlib.sha256).digest()).decode()


def verify_signature(signature: str, method: str, uri: str, timestamp: str, access_key: str, secret_key: str) -> bool:
    expected = make_signature(method, uri, timestamp, access_key, secret_key)
    return hmac.compare_digest(expected.encode(), (signature or "").encode())


class ReplayCache:
    """Signatures of mutating requests seen within the timestamp window, per access key.

    A signature covers method, URI, timestamp and key, so a captured request could be sent again
    unchanged for as long as its timestamp is within MAX_SKEW_MS. The server remembers each accepted
    (access key, signature) of a POST/PUT/PATCH/DELETE until its timestamp leaves the window and
    refuses an exact second copy. GETs are not recorded: replaying one reveals nothing the captured
    answer did not, and concurrent clients legitimately send identical GETs within a millisecond.

    In-process: with several API processes behind one address, a replay sent to another process is
    not caught (the README says so); one process (the default) catches all of them.
    """

    def __init__(self, window_ms: int = MAX_SKEW_MS, max_entries: int = 200_000):
        self.window_ms, self.max_entries = window_ms, max_entries
        self._seen: dict[tuple[str, str], int] = {}  # (access key, signature) -> expiry (ms)
        self._lock = threading.Lock()

    def first_use(self, access_key: str, signature: str, timestamp_ms: int, now_ms: int) -> bool:
        """True the first time a signature is presented; False for a replay within the window."""
        key = (access_key, signature)
        with self._lock:
            expiry = self._seen.get(key)
            if expiry is not None and expiry > now_ms:
                return False
            if len(self._seen) >= self.max_entries:
                self._seen = {k: e for k, e in self._seen.items() if e > now_ms}
                if len(self._seen) >= self.max_entries:  # a flood of valid signatures: forget the oldest half
                    keep = sorted(self._seen.items(), key=lambda kv: kv[1])[len(self._seen) // 2 :]
                    self._seen = dict(keep)
            # Past timestamp + window the timestamp check refuses the request anyway.
            self._seen[key] = timestamp_ms + self.window_ms
            return True
