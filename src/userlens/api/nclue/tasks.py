"""NCLUE Tasks (POST/GET /api/v1/tasks, GET/DELETE /{task_id}), Task Runs (/api/v1/task-runs) and
Custom Attributes profiles (/api/v1/profile/custom-attributes)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from userlens.api.nclue.common import iso
from userlens.api.nclue.resources import common_fields, crud_router

PATH_HELP = "Forbidden: & $ @ ; : + , ? * \\ { } ^ % ` [ ] < > ~ # | \" ' , control and non-ASCII characters."
RESULT_HELP = (
    "A folder (ending in '/') gets `nclue_{random}_{YYYYMMDDHH}.tsv`; otherwise the value is a stem and the file is "
    "`{stem}_{random}_{YYYYMMDDHH}.tsv` (random: 8 hex characters, hour in UTC). " + PATH_HELP
)


class Extensions(BaseModel):
    progress: float | None = Field(description="userlens extension: 0-1 while in progress.")
    fail_detail: str | None = Field(description="userlens extension: what failed.")


# -- Tasks ---------------------------------------------------------------------------------------
class TaskCreate(BaseModel):
    name: str | None = Field(None, description="1-100 characters, unique in the account.")
    train_feature_id: str | None = Field(None, description="A completed Feature holding the training users.")
    train_bucket: str | None = None
    train_file_path: str | None = Field(None, description="Answer file (user_id<TAB>label, labels 0/1) or folder. " + PATH_HELP)
    test_feature_id: str | None = Field(None, description="Optional, with test_bucket and test_file_path: evaluate on this file instead of an automatic 80/20 split.")
    test_bucket: str | None = None
    test_file_path: str | None = None


class TaskCreated(BaseModel):
    task_id: str
    task_name: str
    created_at: str


class TaskPublic(Extensions):
    task_id: str
    task_name: str
    status: str
    created_at: str
    completed_at: str | None
    train_feature_id: str
    train_feature_name: str
    train_bucket: str
    train_file_path: str
    test_feature_id: str | None
    test_feature_name: str | None
    test_bucket: str | None
    test_file_path: str | None
    disk_usage: int | None = Field(description="Bytes of the stored model.")
    fail_message: str | None
    nclue_model: str
    performance: dict | None = Field(
        description="Once completed, test metrics at threshold 0.5: auc, accuracy, precision, recall, f1, positive_rate, "
        "predicted_positive_rate, train_count, test_count, train_positive_count, test_positive_count, split, model, "
        "validation (candidates with their validation AUC) and roc_curve {fpr, tpr}."
    )


def task_public(t) -> dict:
    return {
        "task_id": t.id, "task_name": t.name, **common_fields(t),
        "train_feature_id": t.train_feature_id, "train_feature_name": t.train_feature_name,
        "train_bucket": t.train_bucket, "train_file_path": t.train_file_path,
        "test_feature_id": t.test_feature_id, "test_feature_name": t.test_feature_name,
        "test_bucket": t.test_bucket, "test_file_path": t.test_file_path,
        "disk_usage": t.disk_usage, "nclue_model": t.model_name, "performance": t.performance,
    }


tasks_router = crud_router(
    prefix="/api/v1/tasks", tag="NCLUE Tasks", service="tasks", noun="Task", list_key="tasks", id_name="task_id",
    create_schema=TaskCreate, public_schema=TaskPublic, created_schema=TaskCreated, to_public=task_public,
    to_created=lambda t: {"task_id": t.id, "task_name": t.name, "created_at": iso(t.created_at)},
)


# -- Task Runs -----------------------------------------------------------------------------------
class RunCreate(BaseModel):
    name: str | None = Field(None, description="1-100 characters, unique in the account.")
    task_id: str | None = Field(None, description="A completed Task.")
    feature_id: str | None = Field(None, description="A completed Feature of the Task's model: every user is scored.")
    result_bucket: str | None = None
    result_file_path: str | None = Field(None, description=RESULT_HELP)


class RunCreated(BaseModel):
    run_id: str
    run_name: str
    created_at: str


class RunPublic(Extensions):
    run_id: str
    run_name: str
    task_id: str
    task_name: str
    feature_id: str
    feature_name: str
    status: str
    created_at: str
    completed_at: str | None
    result_bucket: str
    result_file_path: str = Field(description="The final file name. Content: header `user_id<TAB>score`, then one line per user, score = P(label 1), 6 decimals.")
    line_count: int | None = Field(description="Users scored (lines after the header).")
    fail_message: str | None


def run_public(r) -> dict:
    return {
        "run_id": r.id, "run_name": r.name, "task_id": r.task_id, "task_name": r.task_name,
        "feature_id": r.feature_id, "feature_name": r.feature_name, **common_fields(r),
        "result_bucket": r.result_bucket, "result_file_path": r.result_file_path, "line_count": r.line_count,
    }


runs_router = crud_router(
    prefix="/api/v1/task-runs", tag="NCLUE Task Runs", service="runs", noun="Task Run", list_key="runs", id_name="run_id",
    create_schema=RunCreate, public_schema=RunPublic, created_schema=RunCreated, to_public=run_public,
    to_created=lambda r: {"run_id": r.id, "run_name": r.name, "created_at": iso(r.created_at)},
)


# -- Custom Attributes ---------------------------------------------------------------------------
class CustomAttributesCreate(BaseModel):
    name: str | None = Field(None, description="1-100 characters, unique in the account.")
    feature_id: str | None = Field(None, description="A completed Feature: every user is scored.")
    keyword_set: str | None = Field(None, description="Keywords separated by '\\n', at most 1,000 characters; combined with AND (a user's score is their smallest similarity).", examples=["running\nmarathon"])
    result_bucket: str | None = None
    result_file_path: str | None = Field(None, description=RESULT_HELP)


class CustomAttributesCreated(BaseModel):
    profile_id: str
    profile_name: str
    created_at: str


class CustomAttributesPublic(Extensions):
    profile_id: str
    profile_name: str
    feature_id: str
    feature_name: str
    keyword_set: str = Field(description="The keywords, separated by ','.")
    status: str
    created_at: str
    completed_at: str | None
    result_bucket: str
    result_file_path: str = Field(description="The final file name. Content: header `user_id<TAB>score`, one line per user, score = AND-combined cosine similarity, 6 decimals.")
    line_count: int | None
    fail_message: str | None


def custom_attributes_public(p) -> dict:
    return {
        "profile_id": p.id, "profile_name": p.name, "feature_id": p.feature_id, "feature_name": p.feature_name,
        "keyword_set": ",".join(p.keywords), **common_fields(p),
        "result_bucket": p.result_bucket, "result_file_path": p.result_file_path, "line_count": p.line_count,
    }


custom_attributes_router = crud_router(
    prefix="/api/v1/profile/custom-attributes", tag="NCLUE Custom Attributes", service="custom_attributes", noun="Custom Attributes profile",
    list_key="profiles", id_name="profile_id",
    create_schema=CustomAttributesCreate, public_schema=CustomAttributesPublic, created_schema=CustomAttributesCreated,
    to_public=custom_attributes_public, to_created=lambda p: {"profile_id": p.id, "profile_name": p.name, "created_at": iso(p.created_at)},
)
