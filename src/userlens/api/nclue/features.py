"""NCLUE Features: POST/GET /api/v1/features, GET/DELETE /api/v1/features/{feature_id}."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from userlens.api.auth import nclue_account
from userlens.api.nclue.common import iso, job_extensions, job_fields
from userlens.api.pagination import NcluePage, nclue_page
from userlens.understanding.models import Feature

router = APIRouter(prefix="/api/v1/features", tags=["NCLUE Features"])


class FeatureCreate(BaseModel):
    name: str | None = Field(None, description="1-100 characters, unique in the account.", examples=["my-feature"])
    source_bucket: str | None = Field(None, description="Bucket holding the sequence dataset.", examples=["sample"])
    source_file_path: str | None = Field(
        None,
        description="A file or a folder of part files inside the bucket. Forbidden: & $ @ ; : + , ? * \\ { } ^ % ` [ ] < > ~ # | \" ' , control and non-ASCII characters.",
        examples=["sequences/users.csv"],
    )


class FeatureCreated(BaseModel):
    feature_id: str
    feature_name: str
    created_at: str


class FeaturePublic(BaseModel):
    feature_id: str
    feature_name: str
    status: str = Field(description="registered | pending | in_progress | completed | failed")
    created_at: str
    completed_at: str | None
    source_bucket: str
    source_file_path: str
    user_count: int | None
    token_count: int | None = Field(description="Tokens after truncation to the 2,048 most recent per user.")
    disk_usage: int | None = Field(description="Bytes of stored vectors.")
    fail_message: str | None
    nclue_model: str = Field(description="userlens extension: the model version that made the vectors.")
    progress: float | None = Field(description="userlens extension: 0-1 while in progress.")
    fail_detail: str | None = Field(description="userlens extension: what failed, with file and line.")


class FeatureList(BaseModel):
    index: int
    limit: int
    total: int
    features: list[FeaturePublic]


class FeatureDeleted(BaseModel):
    feature_id: str


def feature_public(f: Feature) -> dict:
    job = job_fields(f.job)
    return {
        "feature_id": f.id,
        "feature_name": f.name,
        "status": job["status"],
        "created_at": iso(f.created_at),
        "completed_at": job["completed_at"],
        "source_bucket": f.source_bucket,
        "source_file_path": f.source_file_path,
        "user_count": f.user_count,
        "token_count": f.token_count,
        "disk_usage": f.disk_usage,
        "fail_message": job["fail_message"],
        "nclue_model": f.model_name,
        **job_extensions(f.job),
    }


@router.post("", response_model=FeatureCreated, summary="Create a Feature (asynchronous)")
def create_feature(body: FeatureCreate, request: Request, account_id: str = Depends(nclue_account)):
    f = request.app.state.services.features.create(account_id, body.name, body.source_bucket, body.source_file_path)
    return {"feature_id": f.id, "feature_name": f.name, "created_at": iso(f.created_at)}


@router.get("", response_model=FeatureList, summary="List Features, newest first")
def list_features(request: Request, page: NcluePage = Depends(nclue_page), account_id: str = Depends(nclue_account)):
    total, rows = request.app.state.services.features.list(account_id, page.index, page.limit)
    return page.envelope(total, "features", [feature_public(f) for f in rows])


@router.get("/{feature_id}", response_model=FeaturePublic, summary="Get a Feature")
def get_feature(feature_id: str, request: Request, account_id: str = Depends(nclue_account)):
    return feature_public(request.app.state.services.features.get(account_id, feature_id))


@router.delete("/{feature_id}", response_model=FeatureDeleted, summary="Delete a Feature and its vectors")
def delete_feature(feature_id: str, request: Request, account_id: str = Depends(nclue_account)):
    return {"feature_id": request.app.state.services.features.delete(account_id, feature_id)}
