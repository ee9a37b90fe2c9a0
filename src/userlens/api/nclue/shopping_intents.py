"""NCLUE Shopping Intent profiles: POST/GET /api/v1/profile/shopping-intents, GET/DELETE
/{profile_id}, and GET /api/v1/profile/shopping-intents-download/{profile_id} (the result TSV)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from userlens.api.auth import nclue_account
from userlens.api.nclue.common import iso
from userlens.api.nclue.resources import common_fields, crud_router


class ShoppingIntentCreate(BaseModel):
    name: str | None = Field(None, description="1-100 characters, unique in the account.", examples=["runners-intent"])
    task_id: str | None = Field(None, description="A completed Task: its target group is profiled.")


class ShoppingIntentCreated(BaseModel):
    profile_id: str
    profile_name: str
    task_id: str
    task_name: str
    created_at: str


class ShareRow(BaseModel):
    key: str
    group_share: float = Field(description="Share among the resembling people, each weighted by its Task score.")
    panel_share: float = Field(description="Share among all panel users.")
    lift: float = Field(description="group_share / panel_share.")


class ShoppingIntentResult(BaseModel):
    panel_id: str
    panel_name: str
    group_rule: str = Field(description="How the resembling group is chosen: the top 10% of the panel by Task score, each member weighted by its score.")
    panel_size: int
    group_size: int
    group_min_score: float
    group_mean_score: float
    gender: list[ShareRow] = Field(description="Every gender of the panel, by key.")
    age_group: list[ShareRow] = Field(description="Every age group of the panel, by key.")
    interest: list[ShareRow] = Field(description="Top 20 shopping interests by lift (held by at least max(5, 1% of) panel users); a person may hold several.")


class ShoppingIntentPublic(BaseModel):
    profile_id: str
    profile_name: str
    task_id: str
    task_name: str
    status: str = Field(description="registered | pending | in_progress | completed | failed")
    created_at: str
    completed_at: str | None
    line_count: int | None = Field(description="Reference panel users scored with the Task (once completed).")
    disk_usage: int | None = Field(description="Bytes of the stored result.")
    fail_message: str | None
    nclue_model: str = Field(description="userlens extension: the Task's model (the panel is encoded by the same model).")
    progress: float | None = Field(description="userlens extension: 0-1 while in progress.")
    fail_detail: str | None = Field(description="userlens extension: what failed.")
    result: ShoppingIntentResult | None = Field(description="userlens extension: the result (the download's rows) as JSON, for the console; null until completed.")


def shopping_intent_public(p) -> dict:
    return {
        "profile_id": p.id, "profile_name": p.name, "task_id": p.task_id, "task_name": p.task_name, **common_fields(p),
        "line_count": p.line_count, "disk_usage": p.disk_usage, "nclue_model": p.model_name, "result": p.result,
    }


router = crud_router(
    prefix="/api/v1/profile/shopping-intents", tag="NCLUE Shopping Intent", service="shopping_intents", noun="Shopping Intent profile",
    list_key="profiles", id_name="profile_id",
    create_schema=ShoppingIntentCreate, public_schema=ShoppingIntentPublic, created_schema=ShoppingIntentCreated, to_public=shopping_intent_public,
    to_created=lambda p: {"profile_id": p.id, "profile_name": p.name, "task_id": p.task_id, "task_name": p.task_name, "created_at": iso(p.created_at)},
)

download_router = APIRouter(prefix="/api/v1/profile/shopping-intents-download", tags=["NCLUE Shopping Intent"])

TSV_HELP = (
    "The result as `{profile_id}.tsv` (UTF-8): the header `section<TAB>key<TAB>group_share<TAB>panel_share<TAB>lift`, then one row "
    "per (section, key): sections `gender`, `age_group` (every value) and `interest` (top 20 by lift). Only once the profile is "
    "completed (409 / 19409 before)."
)


@download_router.get(
    "/{profile_id}",
    summary="Download a Shopping Intent result (TSV)",
    description=TSV_HELP,
    response_class=Response,
    responses={200: {"content": {"text/tab-separated-values": {}}, "description": "The TSV file."}},
)
def download(profile_id: str, request: Request, account_id: str = Depends(nclue_account)) -> Response:
    data = request.app.state.services.shopping_intents.download(account_id, profile_id)
    return Response(
        data,
        media_type="text/tab-separated-values; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{profile_id}.tsv"'},
    )
