"""The soak switch of the fault, fuzz, isolation and authentication suites: `USERLENS_SOAK=1` makes
each run longer (more kills, examples, tenants, attempts); `make test` runs the bounded size."""

from __future__ import annotations

import os

SOAK = os.environ.get("USERLENS_SOAK", "") not in ("", "0", "false")


def scaled(normal: int, soak: int) -> int:
    """`soak` under USERLENS_SOAK=1, else `normal`."""
    return soak if SOAK else normal
