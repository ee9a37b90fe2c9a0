"""Catalog: datasets and batches of one sandbox, with the listing conventions of the Catalog API
(objects keyed by id, limit 1-100 default 20, start offset, orderBy asc|desc:field, properties).

A dataset's behaviour comes from its ``schemaRef``: the XDM Individual Profile class (record), the
ExperienceEvent class (time-series) or the Profile union schema (export targets). The tag
``unifiedProfile: ["enabled:true"]`` (spaces tolerated, as aepp writes "enabled: true") enables it
for the profile store; ``isUpsert:true`` makes its records patch instead of overwrite.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

from sqlalchemy import func, select

from userlens.errors import InvalidParameter, NotFound
from userlens.orgs.service import Tenant
from userlens.profiles.models import Batch, BatchFile, Dataset
from userlens.profiles.xdm import behaviour_of
from userlens.storage.db import Database

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
KNOWN_FIELDS = {"name", "description", "schemaRef", "fileDescription", "tags"}
READ_ONLY_FIELDS = {"id", "imsOrg", "sandboxId", "version", "created", "updated", "createdClient", "createdUser", "updatedUser", "viewId", "files", "basePath", "lastBatchId", "lastBatchStatus", "classification", "state"}
ORDERABLE = {"created", "updated", "name", "id", "status"}


def now_ms() -> int:
    return int(time.time() * 1000)


def new_ulid() -> str:
    """A ULID (48-bit ms time + 80 random bits, Crockford base32): the batch id format of newer AEP."""
    n = (now_ms() << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(n >> (5 * i)) & 31] for i in reversed(range(26)))


def tag_flags(tags: Any) -> tuple[bool, bool]:
    """(profile enabled, upsert) from Catalog tags."""
    values = [str(v).replace(" ", "").lower() for v in ((tags or {}).get("unifiedProfile") or [])] if isinstance(tags, dict) else []
    return "enabled:true" in values, "isupsert:true" in values


def parse_listing(params: dict) -> tuple[int, int, list[tuple[str, bool]], list[str] | None]:
    """(start, limit, order, properties) from Catalog query parameters; 400 on bad values."""
    try:
        limit = int(params.get("limit", 20))
        start = int(params.get("start", 0))
    except ValueError:
        raise InvalidParameter("limit and start must be integers") from None
    if not 1 <= limit <= 100:
        raise InvalidParameter("limit must be between 1 and 100")
    if start < 0:
        raise InvalidParameter("start must not be negative")
    order: list[tuple[str, bool]] = []
    spec = params.get("orderBy") or params.get("sort") or "desc:created"
    for part in spec.split(","):
        direction, _, fieldname = part.strip().rpartition(":")
        direction = direction or "asc"
        if direction not in ("asc", "desc") or fieldname not in ORDERABLE:
            raise InvalidParameter(f"orderBy: use asc:FIELD or desc:FIELD with FIELD in {', '.join(sorted(ORDERABLE))}")
        order.append((fieldname, direction == "desc"))
    props = [p.strip() for p in params["properties"].split(",") if p.strip()] if params.get("properties") else None
    return start, limit, order, props


def _order(model, order: list[tuple[str, bool]]):
    cols = {"created": model.created_ms, "updated": model.updated_ms, "id": model.id, "name": getattr(model, "name", model.id), "status": getattr(model, "status", model.id)}
    out = [cols[f].desc() if d else cols[f] for f, d in order]
    return out + [model.id]


class CatalogService:
    def __init__(self, db: Database):
        self.db = db

    # -- datasets ------------------------------------------------------------------------------
    def create_dataset(self, t: Tenant, body: Any) -> Dataset:
        if not isinstance(body, dict):
            raise InvalidParameter("the body must be a JSON object")
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise InvalidParameter("name is required")
        ref = body.get("schemaRef")
        if not isinstance(ref, dict) or not isinstance(ref.get("id"), str):
            raise InvalidParameter("schemaRef.id is required")
        behaviour = behaviour_of(ref["id"])
        if behaviour is None:
            raise InvalidParameter(f"schemaRef.id {ref['id']!r}: userlens knows the classes https://ns.adobe.com/xdm/context/profile, https://ns.adobe.com/xdm/context/experienceevent and the union schema https://ns.adobe.com/xdm/context/profile__union")
        tags = body.get("tags") or {}
        if not isinstance(tags, dict) or not all(isinstance(v, list) for v in tags.values()):
            raise InvalidParameter("tags must map names to arrays of strings")
        enabled, upsert = tag_flags(tags)
        if enabled and behaviour == "union":
            raise InvalidParameter("the union schema is read-only: a dataset on it cannot be enabled for Profile")
        extra = {k: v for k, v in body.items() if k not in KNOWN_FIELDS}
        ms = now_ms()
        with self.db.session() as s:
            ds = Dataset(
                id=secrets.token_hex(12), org_id=t.org_id, sandbox_id=t.sandbox_id, name=name, description=body.get("description"),
                schema_ref=ref, file_description=body.get("fileDescription"), tags=tags, extra=extra, behaviour=behaviour,
                profile_enabled=enabled, upsert=upsert, created_client=t.client_id, created_ms=ms, updated_ms=ms,
            )
            s.add(ds)
            return ds

    def update_dataset(self, t: Tenant, dataset_id: str, body: Any, replace: bool) -> Dataset:
        """PUT (`replace`: the body is the whole dataset) or PATCH (the fields given). The class of
        the schema cannot change (rows already ingested follow it); tags recompute the Profile flags
        (disabling a dataset hides its data from profiles at once, enabling shows it again). Fields
        the platform maintains (id, created, lastBatchId, ...) are ignored."""
        if not isinstance(body, dict):
            raise InvalidParameter("the body must be a JSON object")
        body = {k: v for k, v in body.items() if k not in READ_ONLY_FIELDS}
        with self.db.session() as s:
            ds = s.execute(select(Dataset).where(Dataset.id == dataset_id, Dataset.sandbox_id == t.sandbox_id).with_for_update()).scalar_one_or_none()
            if ds is None:
                raise NotFound("DataSet not found.")
            if replace:
                for f in ("name", "schemaRef"):
                    if f not in body:
                        raise InvalidParameter(f"{f} is required (PUT replaces the dataset; PATCH changes some fields)")
            if "name" in body:
                if not isinstance(body["name"], str) or not body["name"].strip():
                    raise InvalidParameter("name must be a non-empty string")
                ds.name = body["name"]
            if "schemaRef" in body:
                ref = body["schemaRef"]
                if not isinstance(ref, dict) or not isinstance(ref.get("id"), str):
                    raise InvalidParameter("schemaRef.id is required")
                if behaviour_of(ref["id"]) != ds.behaviour:
                    raise InvalidParameter("schemaRef: a dataset keeps the class of its schema (record, time-series or union)")
                ds.schema_ref = ref
            if replace or "description" in body:
                ds.description = body.get("description")
            if replace or "fileDescription" in body:
                ds.file_description = body.get("fileDescription")
            if replace or "tags" in body:
                tags = body.get("tags") or {}
                if not isinstance(tags, dict) or not all(isinstance(v, list) for v in tags.values()):
                    raise InvalidParameter("tags must map names to arrays of strings")
                enabled, upsert = tag_flags(tags)
                if enabled and ds.behaviour == "union":
                    raise InvalidParameter("the union schema is read-only: a dataset on it cannot be enabled for Profile")
                ds.tags, ds.profile_enabled, ds.upsert = tags, enabled, upsert
            extra = {k: v for k, v in body.items() if k not in KNOWN_FIELDS}
            ds.extra = extra if replace else {**(ds.extra or {}), **extra}
            ds.version += 1
            ds.updated_ms = now_ms()
            return ds

    def get_dataset(self, t: Tenant, dataset_id: str) -> Dataset:
        with self.db.read_session() as s:
            ds = s.execute(select(Dataset).where(Dataset.id == dataset_id, Dataset.sandbox_id == t.sandbox_id)).scalar_one_or_none()
            if ds is None:
                raise NotFound("DataSet not found.")
            return ds

    def list_datasets(self, t: Tenant, params: dict) -> list[Dataset]:
        start, limit, order, _ = parse_listing(params)
        with self.db.read_session() as s:
            q = select(Dataset).where(Dataset.sandbox_id == t.sandbox_id)
            if params.get("name"):
                q = q.where(Dataset.name == params["name"])
            return list(s.execute(q.order_by(*_order(Dataset, order)).offset(start).limit(limit)).scalars())

    def delete_dataset(self, t: Tenant, dataset_id: str) -> list[str]:
        """Removes the dataset and its batches' metadata; returns the batch ids (the caller removes
        their files and profile data)."""
        with self.db.session() as s:
            ds = s.execute(select(Dataset).where(Dataset.id == dataset_id, Dataset.sandbox_id == t.sandbox_id).with_for_update()).scalar_one_or_none()
            if ds is None:
                raise NotFound("DataSet not found.")
            batches = list(s.execute(select(Batch).where(Batch.dataset_id == dataset_id)).scalars())
            for b in batches:
                s.execute(BatchFile.__table__.delete().where(BatchFile.batch_id == b.id))
                s.delete(b)
            s.delete(ds)
            return [b.id for b in batches]

    # -- batches -------------------------------------------------------------------------------
    def get_batch(self, t: Tenant, batch_id: str) -> Batch:
        with self.db.read_session() as s:
            b = s.execute(select(Batch).where(Batch.id == batch_id, Batch.sandbox_id == t.sandbox_id)).scalar_one_or_none()
            if b is None:
                raise NotFound("Batch not found.")
            return b

    def list_batches(self, t: Tenant, params: dict) -> list[Batch]:
        start, limit, order, _ = parse_listing(params)
        with self.db.read_session() as s:
            q = select(Batch).where(Batch.sandbox_id == t.sandbox_id)
            if params.get("dataSet"):
                q = q.where(Batch.dataset_id == params["dataSet"])
            if params.get("status"):
                q = q.where(Batch.status == params["status"])
            for p, col, op in (("createdAfter", Batch.created_ms, "gt"), ("createdBefore", Batch.created_ms, "lt")):
                if params.get(p):
                    try:
                        v = int(params[p])
                    except ValueError:
                        raise InvalidParameter(f"{p} must be epoch milliseconds") from None
                    q = q.where(col > v if op == "gt" else col < v)
            return list(s.execute(q.order_by(*_order(Batch, order)).offset(start).limit(limit)).scalars())

    def count_batches(self, t: Tenant) -> int:
        with self.db.read_session() as s:
            return s.execute(select(func.count()).select_from(Batch).where(Batch.sandbox_id == t.sandbox_id)).scalar_one()
