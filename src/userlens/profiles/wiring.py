"""Builds the AEP services on the shared database, object store and job engine."""

from __future__ import annotations


def build_aep(svc) -> None:
    from userlens.orgs.service import OrgService
    from userlens.profiles.access import ProfileAccess
    from userlens.profiles.catalog import CatalogService
    from userlens.profiles.ingest import IngestService
    from userlens.profiles.merge import MergePolicyService
    from userlens.profiles.store import ProfileStore

    svc.orgs = OrgService(svc.db)
    svc.catalog = CatalogService(svc.db)
    svc.profile_store = ProfileStore(svc.db)
    svc.merge_policies = MergePolicyService(svc.db)
    svc.profile_access = ProfileAccess(svc.profile_store, svc.merge_policies)
    svc.ingest = IngestService(svc.db, svc.store, svc.queue, svc.settings.internal_bucket, svc.profile_store)
    svc.ingest.register_jobs(svc.registry)
