"""Builds the AEP services on the shared database, object store and job engine."""

from __future__ import annotations


def build_aep(db, store, queue, registry, internal_bucket: str, *, segment_chunk_profiles: int | None = None) -> dict:
    """The AEP services by their `Services` field names; registers the ingestion job kind."""
    from userlens.orgs.service import OrgService
    from userlens.profiles.access import ProfileAccess
    from userlens.profiles.catalog import CatalogService
    from userlens.profiles.ingest import IngestService
    from userlens.profiles.merge import MergePolicyService
    from userlens.profiles.store import ProfileStore

    profile_store = ProfileStore(db, store, internal_bucket)
    merge_policies = MergePolicyService(db)
    ingest = IngestService(db, store, queue, internal_bucket, profile_store)
    ingest.register_jobs(registry)
    from userlens.profiles.export import ExportService
    from userlens.profiles.segments import SegmentService

    segments = SegmentService(db, queue, profile_store, merge_policies, **({"chunk_profiles": segment_chunk_profiles} if segment_chunk_profiles else {}))
    segments.register_jobs(registry)
    exports = ExportService(db, store, queue, internal_bucket, profile_store, merge_policies, segments)
    exports.register_jobs(registry)
    from userlens.profiles.system_jobs import SystemJobService

    system_jobs = SystemJobService(db, queue, profile_store)
    system_jobs.register_jobs(registry)
    return {
        "orgs": OrgService(db),
        "catalog": CatalogService(db),
        "profile_store": profile_store,
        "merge_policies": merge_policies,
        "profile_access": ProfileAccess(profile_store, merge_policies),
        "ingest": ingest,
        "segments": segments,
        "exports": exports,
        "system_jobs": system_jobs,
    }
