"""Structured logs (structlog): JSON lines or console, on stderr. Secrets are never passed to a log
call; as a second line of defence, values of keys that look secret are masked."""

from __future__ import annotations

import logging
import sys

import structlog

_SECRET_WORDS = ("secret", "password", "token", "signature", "master_key", "authorization")


def _mask_secrets(_logger, _name, event_dict):
    for key in list(event_dict):
        if any(w in key.lower() for w in _SECRET_WORDS):
            event_dict[key] = "***"
    return event_dict


def configure_logging(level: str = "INFO", fmt: str = "console") -> None:
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _mask_secrets,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "aiobotocore", "s3fs", "urllib3", "asyncio", "fsspec", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
