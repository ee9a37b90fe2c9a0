"""The `userlens` command: serve | worker | migrate | keys | orgs | panel | fsck | call."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from userlens.config import Settings

app = typer.Typer(help="userlens: self-hosted NCLUE-compatible user understanding and AEP-compatible profiles.", no_args_is_help=True)
keys_app = typer.Typer(help="NCLUE access keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
orgs_app = typer.Typer(help="AEP organisations, sandboxes and client credentials.", no_args_is_help=True)
app.add_typer(orgs_app, name="orgs")
panel_app = typer.Typer(help="Reference panels for NCLUE Shopping Intent profiles.", no_args_is_help=True)
app.add_typer(panel_app, name="panel")
log = logging.getLogger("userlens.cli")


def _settings() -> Settings:
    from userlens.logs import configure_logging

    s = Settings()
    configure_logging(s.log_level, s.log_format)
    return s


def _prepare(settings: Settings):
    """Migrate, build services, make sure the internal bucket exists."""
    from userlens.services import build_services
    from userlens.storage.migrate import upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    svc = build_services(settings)
    svc.store.create_bucket(settings.internal_bucket)
    return svc


def _save_credentials(settings: Settings, creds) -> Path:
    path = settings.data_dir / "credentials.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"account": creds.account_name, "access_key": creds.access_key, "secret_key": creds.secret_key}, f)
    return path


@app.command()
def migrate() -> None:
    """Bring the metadata database schema to the latest version."""
    from userlens.storage.migrate import current, upgrade

    s = _settings()
    upgrade(s.database_url)
    typer.echo(f"database at revision {current(s.database_url)}")


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, help="Listen address (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default 8000)."),
    workers: Optional[int] = typer.Option(None, help="In-process worker threads (0: run `userlens worker` separately)."),
    samples: bool = typer.Option(True, help="Install the sample bucket if missing."),
) -> None:
    """Run the HTTP service (and, by default, in-process workers)."""
    import uvicorn

    from userlens.api.app import create_app
    from userlens.samples import panel as sample_panel
    from userlens.samples import sequences as sample_sequences

    settings = _settings()
    if workers is not None:
        settings.workers = workers
    svc = _prepare(settings)
    if not svc.accounts.has_any_key():
        creds = svc.accounts.create_key("default")
        path = _save_credentials(settings, creds)
        typer.echo(
            "\n=== First start: an access key was created for account 'default' ===\n"
            f"  access key: {creds.access_key}\n"
            f"  secret key: {creds.secret_key}\n"
            f"This secret is shown once. `userlens call` reads it from {path} (mode 0600).\n"
        )
    if samples and sample_sequences.install(svc.store):
        typer.echo(f"Sample data written to bucket '{sample_sequences.SAMPLE_BUCKET}': {sample_sequences.SAMPLE_KEY}")
    if samples and sample_panel.install(svc.store, sample_sequences.SAMPLE_BUCKET):
        typer.echo(f"Sample reference panel files written to bucket '{sample_sequences.SAMPLE_BUCKET}': {sample_panel.SEQUENCES_KEY}, {sample_panel.ATTRIBUTES_KEY}")
    application = create_app(settings, svc)
    uvicorn.run(application, host=host or settings.host, port=port or settings.port, log_config=None)


@app.command()
def worker(
    threads: int = typer.Option(1, help="Jobs run at once by this process."),
    ray: bool = typer.Option(False, "--ray", help="Run heavy jobs' chunks on Ray: joins USERLENS_RAY_ADDRESS / RAY_ADDRESS, else starts a local Ray bound to 127.0.0.1."),
) -> None:
    """Run job workers as a separate process (any number may share one database)."""
    settings = _settings()
    if ray:
        from userlens.jobs.executor import connect_ray

        settings.executor = "ray"
        typer.echo(f"ray: {connect_ray(settings)}")
    svc = _prepare(settings)
    w = svc.make_worker(threads)
    signal.signal(signal.SIGTERM, lambda *_: w._stop.set())
    typer.echo(f"worker {w.worker_id} running {threads} thread(s) on the {svc.executor.name} executor; kinds: {', '.join(sorted(svc.registry.kinds))}")
    try:
        w.run_forever()
    finally:
        if ray:
            import ray as ray_module

            ray_module.shutdown()


@keys_app.command("create")
def keys_create(account: str = typer.Option("default", help="Account the key belongs to (created if new)."), save: bool = typer.Option(False, help="Also save it as the credentials `userlens call` uses.")) -> None:
    """Create an access key; its secret is printed once."""
    settings = _settings()
    svc = _prepare(settings)
    creds = svc.accounts.create_key(account)
    typer.echo(json.dumps({"account": account, "access_key": creds.access_key, "secret_key": creds.secret_key}, indent=2))
    if save:
        typer.echo(f"saved to {_save_credentials(settings, creds)}", err=True)


@keys_app.command("list")
def keys_list() -> None:
    """List access keys (never their secrets)."""
    svc = _prepare(_settings())
    for key, account, state in svc.accounts.list_keys():
        typer.echo(f"{key}\t{account}\t{state}")


@keys_app.command("revoke")
def keys_revoke(access_key: str) -> None:
    """Revoke an access key."""
    svc = _prepare(_settings())
    if not svc.accounts.revoke(access_key):
        typer.echo("no such key", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {access_key}")


@orgs_app.command("create")
def orgs_create(name: str = typer.Option(..., help="Organisation name (unique)."), sandbox: str = typer.Option("prod", help="Name of its default production sandbox.")) -> None:
    """Create an AEP org, its production sandbox and client credentials (the secret is printed once)."""
    svc = _prepare(_settings())
    creds = svc.orgs.create_org(name, sandbox)
    typer.echo(json.dumps({"org_id": creds.org_id, "sandbox": creds.sandbox, "client_id": creds.client_id, "client_secret": creds.client_secret, "token_endpoint": "/ims/token/v3"}, indent=2))


@orgs_app.command("add-sandbox")
def orgs_add_sandbox(org_id: str, name: str, type: str = typer.Option("development", help="development | production")) -> None:
    """Add a sandbox to an org."""
    svc = _prepare(_settings())
    typer.echo(svc.orgs.create_sandbox(org_id, name, type))


@orgs_app.command("list")
def orgs_list() -> None:
    """List orgs and their sandboxes."""
    svc = _prepare(_settings())
    for org_id, name, sandboxes in svc.orgs.list_orgs():
        typer.echo(f"{org_id}\t{name}\t{','.join(sandboxes)}")


def _panel_json(p) -> dict:
    return {
        "panel_id": p.id, "name": p.name, "model": p.model_name, "builtin": p.builtin, "user_count": p.user_count, "dim": p.dim,
        "categories": {k: len(v) for k, v in p.categories.items()}, "disk_usage": p.disk_usage,
        "source": f"{p.source_bucket}/{p.sequences_path} + {p.attributes_path}", "created_at": p.created_at.isoformat(timespec="seconds"),
    }


@panel_app.command("import")
def panel_import(
    name: str = typer.Option(..., help="Panel name (shown in profiles)."),
    bucket: str = typer.Option(..., help="Bucket holding both files."),
    sequences: str = typer.Option(..., help="Sequence file or folder: user_id<TAB>b1->b2->... (the Feature input format)."),
    attributes: str = typer.Option(..., help="Attribute file: header user_id<TAB>gender<TAB>age_group<TAB>interests, interests separated by '|'."),
    model: Optional[str] = typer.Option(None, help="Model that encodes the sequences (default: the server default, ul-hash-v2)."),
) -> None:
    """Import a reference panel; it becomes the panel of its model for new Shopping Intent profiles."""
    from userlens.errors import DomainError

    svc = _prepare(_settings())
    try:
        panel = svc.panels.import_panel(name, bucket, sequences, attributes, model, progress=lambda n: typer.echo(f"  {n} users encoded", err=True))
    except DomainError as exc:
        typer.echo(f"panel import failed: {exc.details}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(_panel_json(panel), indent=2, ensure_ascii=False))


@panel_app.command("list")
def panel_list() -> None:
    """List reference panels, newest first; the first of each model is the one in use."""
    svc = _prepare(_settings())
    in_use: set[str] = set()
    for p in svc.panels.list():
        state = "in use" if p.model_name not in in_use else "superseded"
        in_use.add(p.model_name)
        typer.echo(f"{p.id}\t{p.name}\t{p.model_name}\t{p.user_count} users\t{state}")


@panel_app.command("delete")
def panel_delete(panel_id: str) -> None:
    """Delete a reference panel (refused while a profile that reads it has not finished)."""
    from userlens.errors import DomainError

    svc = _prepare(_settings())
    try:
        svc.panels.delete(panel_id)
    except DomainError as exc:
        typer.echo(f"panel delete failed: {exc.details}", err=True)
        raise typer.Exit(1)
    typer.echo(f"deleted {panel_id}")


@app.command()
def fsck(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    repair: bool = typer.Option(False, help="Delete orphans older than --grace-seconds (never a referenced object)."),
    grace_seconds: float = typer.Option(3600.0, help="Orphans younger than this are reported, never deleted (work in flight may own them)."),
    page_size: int = typer.Option(1000, min=1, help="Metadata rows per query and objects per listing page (what the check holds in memory at once)."),
) -> None:
    """Check that the metadata database and the object store agree: orphans, dangling references, status mismatches. Exit code 1 if any problem is left."""
    from userlens.fsck import run_fsck

    svc = _prepare(_settings())
    report = run_fsck(svc, repair=repair, grace_seconds=grace_seconds, page_size=page_size)
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.render())
    raise typer.Exit(0 if report.clean else 1)


@app.command()
def call(
    method: str = typer.Argument(..., help="GET, POST or DELETE"),
    path: str = typer.Argument(..., help="e.g. /api/v1/features or '/api/v1/features?index=0&limit=5'"),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="JSON body for POST."),
    url: Optional[str] = typer.Option(None, help="Service URL (default http://127.0.0.1:8000 or USERLENS_URL)."),
    wait: bool = typer.Option(False, help="After a POST, poll the new resource until completed or failed."),
) -> None:
    """Send a signed NCLUE request and print the JSON answer."""
    from urllib.parse import parse_qsl, urlsplit

    from userlens.client import NclueClient, NclueError, load_credentials

    settings = Settings()
    access_key, secret_key = load_credentials(settings.data_dir)
    base = url or os.environ.get("USERLENS_URL") or f"http://{settings.host}:{settings.port}"
    client = NclueClient(base, access_key, secret_key)
    parts = urlsplit(path)
    params = dict(parse_qsl(parts.query)) or None
    try:
        result = client.request(method.upper(), parts.path, params, json.loads(data) if data else None)
        typer.echo(json.dumps(result, indent=2, ensure_ascii=False))
        if wait and method.upper() == "POST" and isinstance(result, dict):
            # The first *_id of a creation answer is the new resource's (a profile's also names its task_id).
            rid = next((v for k, v in result.items() if k.endswith("_id")), None)
            if rid:
                final = client.wait(f"{parts.path.rstrip('/')}/{rid}")
                typer.echo(json.dumps(final, indent=2, ensure_ascii=False))
    except NclueError as exc:
        typer.echo(json.dumps(exc.body, indent=2, ensure_ascii=False), err=True)
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
