"""A small NCLUE client that signs requests the way NCP's API Gateway expects (signature v2).

    from userlens.client import NclueClient
    c = NclueClient("http://127.0.0.1:8000", access_key, secret_key)
    fid = c.post("/api/v1/features", {"name": "f1", "source_bucket": "sample", "source_file_path": "sequences/users.csv"})["feature_id"]
    c.wait("/api/v1/features/" + fid)

It works against NCLUE itself too: pass base_url="https://nclue.apigw.ntruss.com".
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from userlens.accounts.signature import make_signature

TERMINAL_STATUSES = {"completed", "failed"}


class NclueError(Exception):
    def __init__(self, status: int, body: Any):
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


class NclueClient:
    def __init__(self, base_url: str, access_key: str, secret_key: str, *, http: httpx.Client | None = None, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.access_key, self.secret_key = access_key, secret_key
        self.http = http or httpx.Client(timeout=timeout)

    def signed_headers(self, method: str, uri: str, timestamp: str | None = None) -> dict[str, str]:
        ts = timestamp or str(int(time.time() * 1000))
        return {
            "x-ncp-apigw-timestamp": ts,
            "x-ncp-iam-access-key": self.access_key,
            "x-ncp-apigw-signature-v2": make_signature(method, uri, ts, self.access_key, self.secret_key),
        }

    def raw(self, method: str, path: str, params: dict | None = None, body: Any = None) -> httpx.Response:
        """Sends a signed request; the signed URI is exactly the path and query that are sent."""
        uri = path + (f"?{urlencode(params)}" if params else "")
        headers = self.signed_headers(method, uri)
        content = None
        if body is not None:
            headers["content-type"] = "application/json"
            content = json.dumps(body)
        return self.http.request(method.upper(), self.base_url + uri, headers=headers, content=content)

    def request(self, method: str, path: str, params: dict | None = None, body: Any = None) -> Any:
        resp = self.raw(method, path, params, body)
        try:
            data = resp.json()
        except ValueError:
            data = resp.text
        if resp.status_code >= 400:
            raise NclueError(resp.status_code, data)
        return data

    def get(self, path: str, params: dict | None = None) -> Any:
        return self.request("GET", path, params)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def wait(self, path: str, timeout: float = 600.0, interval: float = 0.5) -> dict:
        """Polls a resource until its status is completed or failed (bounded by `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            res = self.get(path)
            if res.get("status") in TERMINAL_STATUSES:
                return res
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} still {res.get('status')} after {timeout:.0f}s")
            time.sleep(interval)


def load_credentials(data_dir: Path) -> tuple[str, str]:
    """USERLENS_ACCESS_KEY / USERLENS_SECRET_KEY, else the key `userlens serve` saved on first start."""
    ak, sk = os.environ.get("USERLENS_ACCESS_KEY"), os.environ.get("USERLENS_SECRET_KEY")
    if ak and sk:
        return ak, sk
    path = Path(data_dir) / "credentials.json"
    if not path.exists():
        raise FileNotFoundError(f"no credentials: set USERLENS_ACCESS_KEY and USERLENS_SECRET_KEY, or run `userlens serve` once to create {path}")
    data = json.loads(path.read_text())
    return data["access_key"], data["secret_key"]
