"""Request size limits, as an ASGI middleware in front of every route.

AEP batch file uploads (PUT .../files/{path}) may be up to `max_upload_bytes` (AEP's single-request
limit, 256 MB by default); every other body up to `max_request_bytes` (1 MiB). A declared
Content-Length over the limit is refused before a byte is read; a chunked body is counted as it
streams and refused the moment it passes the limit (the upload handler then drops its partial
object). Either way the answer is 413 in the family's error body: NCLUE 19413 PAYLOAD_TOO_LARGE,
AEP's PayloadTooLargeError problem."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from userlens.api.errors import ApiError, family_error

UPLOAD_PATH = re.compile(r"^/data/foundation/import/batches/[^/]+/datasets/[^/]+/files/")


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_request_bytes: int, max_upload_bytes: int):
        self.app, self.max_request, self.max_upload = app, max_request_bytes, max_upload_bytes

    def _too_large(self, scope: Scope, limit: int) -> ApiError:
        return family_error(Request(scope), "PAYLOAD_TOO_LARGE", f"the request body is larger than {limit} bytes", 413)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_upload if (scope["method"] == "PUT" and UPLOAD_PATH.match(scope["path"])) else self.max_request
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                too_big = False  # the server rejects a malformed Content-Length itself
            if too_big:
                err = self._too_large(scope, limit)
                from starlette.responses import JSONResponse

                # Connection: close, so that a client still sending the body is not read on.
                await JSONResponse(err.body, status_code=err.status, headers={**(err.headers or {}), "Connection": "close"})(scope, receive, send)
                return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise self._too_large(scope, limit)  # an ApiError: rendered by the app's handler
            return message

        await self.app(scope, counted, send)
