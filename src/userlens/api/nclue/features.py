"""NCLUE Features: POST/GET /api/v1/features, GET/DELETE /api/v1/features/{feature_id}."""

from __future__ import annotations

from pydantic import BaseModel, Field

from userlens.api.nclue.common import iso
from userlens.api.nclue.resources import common_fields, crud_router


class FeatureCreate(BaseModel):
    name: str | None = Field(None, description="1-100 characters, unique in the account.", examples=["my-feature"])
    source_bucket: str | None = Field(None, description="Bucket holding the sequence dataset.", examples=["sample"])
    source_file_path: str | None = Field(
        None,
        description="A file or a folder of part files inside the bucket. Forbidden: & $ @ ; : + , ? * \\ { } ^ % ` [ ] < > ~ # | \" ' , control and non-ASCII characters.",
        examples=["sequences/users.csv"],
    )
    nclue_model: str | None = Field(
        None,
        description="userlens extension: the model, ul-hash-v2 (default: fast, best for Tasks), ul-hash-v1 (its 1024-dimension predecessor) or ul-sem-v1 (multilingual "
        "sentence embeddings: keywords match by meaning, for Custom Attributes). NCLUE clients leave it out.",
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


def feature_public(f) -> dict:
    return {
        "feature_id": f.id,
        "feature_name": f.name,
        **common_fields(f),
        "source_bucket": f.source_bucket,
        "source_file_path": f.source_file_path,
        "user_count": f.user_count,
        "token_count": f.token_count,
        "disk_usage": f.disk_usage,
        "nclue_model": f.model_name,
    }


router = crud_router(
    prefix="/api/v1/features", tag="NCLUE Features", service="features", noun="Feature", list_key="features", id_name="feature_id",
    create_schema=FeatureCreate, public_schema=FeaturePublic, created_schema=FeatureCreated,
    to_public=feature_public, to_created=lambda f: {"feature_id": f.id, "feature_name": f.name, "created_at": iso(f.created_at)},
)
