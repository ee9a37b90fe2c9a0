"""Lake export plans: what a lake export (``scan.LakeExport``) learns from the identity graph, kept
for the next export while the graph and the visible loads stay the same.

A lake export must know, for every row of every record part, the graph it belongs to (its XID and
members) and whether the graph has exactly one live record fragment (exported from the lake) or
several (merged by SQL). Working that out reads the whole identity graph from the database and joins
it to the parts' sidecars: O(sandbox) work, most of an export's serial time. None of it depends on
the export request (fields, merge policy, fromIngestTimestamp), so the export that computes it
writes it as a *plan* to the object store and installs it here; later exports of the sandbox use it
as long as it is current.

A plan is current when

* its graph version is the sandbox's: every transaction that rewrites the graph (ingest
  publication, deletions, re-graphing) adds one to ``aep_lake_plans.graph_version``
  (``ProfileStore.graph_lock``), and
* its load fingerprint is the one of the sandbox's visible loads now (their ids, datasets, ingestion
  times, behaviours and Profile flags: a dataset switched off for Profile changes it). Live record
  counts are not in it: the fragments of visible loads change only in graph-writing transactions
  (an entity delete removes fragments, then re-graphs), which count a new version anyway.

Layout: ``aep/{org}/{sandbox}/lake-plans/{job}/{attempt}/`` (written by that export attempt):
``manifest.json`` (the parts, their unified Arrow schema, the chunks' slices and files), ``rest.parquet``
(the XIDs SQL merges) and ``rows-CCCCC-NNN.parquet`` (per chunk: slice, row, XID, primary identity,
graph members). Installing is a compare-and-set on the graph version read with the loads; a plan
that lost the race (the graph changed meanwhile, or another export installed one first) serves only
its own export and is deleted after it. A replaced plan is *retired*: kept RETIRE_MS for exports
still reading it, then deleted by a later install. fsck counts current and retired plans as
referenced, and the folder of an attempt that neither installed nor removed its plan as a dead attempt.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pyarrow as pa
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from userlens.profiles.models import LakePlanState
from userlens.storage.db import Database
from userlens.profiles.catalog import now_ms

RETIRE_MS = 15 * 60 * 1000  # a replaced plan stays readable this long (exports that started on it)
MANIFEST = "manifest.json"


def plan_folder(org_id: str, sandbox_id: str, job_id: str, attempt_tag: str) -> str:
    from userlens.profiles.ingest import sandbox_root

    return f"{sandbox_root(org_id, sandbox_id)}/lake-plans/{job_id}/{attempt_tag}"


def fingerprint(loads: list[tuple]) -> str:
    """A digest of the sandbox's visible loads as the plan saw them (any change: a new plan)."""
    return hashlib.sha256(json.dumps(loads, separators=(",", ":")).encode()).hexdigest()


def state(s: Session, sandbox_id: str) -> tuple[int, dict | None]:
    """(graph version, current plan) of a sandbox, in the caller's read snapshot."""
    row = s.execute(select(LakePlanState.graph_version, LakePlanState.current).where(LakePlanState.sandbox_id == sandbox_id)).first()
    return (int(row[0]), row[1]) if row is not None else (0, None)


def install(db: Database, objects, bucket: str, sandbox_id: str, plan: dict) -> bool:
    """Makes `plan` ({prefix, version, loads}) the sandbox's current plan if the graph is still at
    its version and no current plan of that version and fingerprint exists. The replaced plan is
    retired; retired plans past RETIRE_MS are deleted (objects first: a failed deletion keeps the
    entry, and fsck's view, until a later install). Returns whether the plan was installed."""
    now = now_ms()
    with db.session() as s:
        row = s.execute(select(LakePlanState).where(LakePlanState.sandbox_id == sandbox_id)).scalar_one_or_none()
        expired = [r for r in (row.retired or []) if now - int(r["at_ms"]) >= RETIRE_MS] if row is not None else []
    gone = []
    for r in expired:
        try:
            objects.delete_prefix(bucket, r["prefix"])
            gone.append(r["prefix"])
        except Exception:  # noqa: BLE001 - kept listed; a later install tries again
            pass
    with db.session() as s:
        # A sandbox whose graph was last written before this table existed (migration a005) has no
        # row: version 0, as the plan read it. The insert also takes SQLite's write lock first, so
        # what is read next stays current until commit; PostgreSQL locks the row.
        s.execute(text("INSERT INTO aep_lake_plans (sandbox_id, graph_version) VALUES (:s, 0) ON CONFLICT (sandbox_id) DO NOTHING"), {"s": sandbox_id})
        row = s.execute(select(LakePlanState).where(LakePlanState.sandbox_id == sandbox_id).with_for_update()).scalar_one()
        if int(row.graph_version) != int(plan["version"]):
            return False  # the graph changed since the plan read it
        cur = row.current
        if cur is not None and int(cur["version"]) == int(plan["version"]) and cur["loads"] == plan["loads"]:
            return False  # another export installed a plan of this very state first
        retired = [r for r in (row.retired or []) if r["prefix"] not in gone]
        if cur is not None:
            retired.append({"prefix": cur["prefix"], "at_ms": now})
        row.current, row.retired = dict(plan), retired
    return True


def referenced(s: Session, sandbox_ids: list[str]) -> set[str]:
    """The plan folders the database references (current and retired) in these sandboxes."""
    out: set[str] = set()
    for cur, retired in s.execute(select(LakePlanState.current, LakePlanState.retired).where(LakePlanState.sandbox_id.in_(sandbox_ids))):
        if cur:
            out.add(cur["prefix"])
        out.update(r["prefix"] for r in retired or [])
    return out


def write_manifest(objects, bucket: str, prefix: str, manifest: dict[str, Any], schema: pa.Schema) -> None:
    body = {**manifest, "schema": base64.b64encode(schema.serialize().to_pybytes()).decode()}
    objects.write_bytes(bucket, f"{prefix}/{MANIFEST}", json.dumps(body, separators=(",", ":")).encode())


def read_manifest(objects, bucket: str, prefix: str) -> tuple[dict[str, Any], pa.Schema]:
    body = json.loads(objects.read_bytes(bucket, f"{prefix}/{MANIFEST}"))
    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(body.pop("schema"))))
    return body, schema
