"""NCP API Gateway authentication for the NCLUE family.

Each request carries x-ncp-apigw-timestamp (ms), x-ncp-iam-access-key and x-ncp-apigw-signature-v2.
The signature covers METHOD, the path with its query string exactly as sent, the timestamp and the
access key; it is compared in constant time. Any failure is 401 / 10100 ACCESS_DENIED, and the
details never echo the secret or the expected signature.
"""

from __future__ import annotations

import time

from fastapi import Request

from userlens.accounts.signature import MAX_SKEW_MS, verify_signature
from userlens.api.errors import nclue_error


def _denied(details: str):
    return nclue_error("ACCESS_DENIED", details)


def nclue_account(request: Request) -> str:
    """FastAPI dependency: the account id of a correctly signed request."""
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
    found = services.accounts.lookup(access_key)
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
    request.state.account_id = account_id
    return account_id
