"""NCLUE list paging: `index` is the zero-based start position (an offset), `limit` 1-100 (default 20).

The reference leaves `index` open (offset or page number); userlens follows the current docs'
"start location of the list" and treats it as an offset. `total` counts all items, on every page."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Query

from userlens.api.errors import nclue_error


@dataclass(frozen=True)
class NcluePage:
    index: int
    limit: int

    def envelope(self, total: int, key: str, items: list) -> dict:
        return {"index": self.index, "limit": self.limit, "total": total, key: items}


async def nclue_page(  # async: pure parsing, so FastAPI runs it on the event loop (no thread hop)
    index: str | None = Query(None, description="Start position (offset) in the list, 0 or more. Default 0."),
    limit: str | None = Query(None, description="Items per page, 1-100. Default 20."),
) -> NcluePage:
    def parse(value: str | None, name: str, default: int, lo: int, hi: int | None) -> int:
        if value is None or value == "":
            return default
        try:
            n = int(value)
        except ValueError:
            raise nclue_error("INVALID_PARAMETER", f"{name} must be an integer (got {value!r})") from None
        if n < lo or (hi is not None and n > hi):
            rng = f"{lo}-{hi}" if hi is not None else f"{lo} or more"
            raise nclue_error("INVALID_PARAMETER", f"{name} must be {rng} (got {n})")
        return n

    return NcluePage(parse(index, "index", 0, 0, None), parse(limit, "limit", 20, 1, 100))
