"""NCP API Gateway signature v2, shared by the server (verify) and the client (sign).

message   = METHOD + " " + URI(with ?query) + "\n" + TIMESTAMP + "\n" + ACCESS_KEY
signature = Base64(HMAC-SHA256(secret, message))
"""

from __future__ import annotations

import base64
import hashlib
import hmac

MAX_SKEW_MS = 5 * 60 * 1000


def make_signature(method: str, uri: str, timestamp: str, access_key: str, secret_key: str) -> str:
    message = f"{method.upper()} {uri}\n{timestamp}\n{access_key}"
    return base64.b64encode(hmac.new(secret_key.encode(), message.encode(), hashlib.sha256).digest()).decode()


def verify_signature(signature: str, method: str, uri: str, timestamp: str, access_key: str, secret_key: str) -> bool:
    expected = make_signature(method, uri, timestamp, access_key, secret_key)
    return hmac.compare_digest(expected.encode(), (signature or "").encode())
