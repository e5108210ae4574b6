"""GET /v1/models: what the workers can load (registered names, cached models, demo)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from app.deps import CtxDep, TenantDep

router = APIRouter(prefix="/v1/models", tags=["models"])


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    source: Literal["demo", "registered", "hub_cache"]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


def _hub_cached() -> list[str]:
    try:
        from huggingface_hub import scan_cache_dir

        return sorted(r.repo_id for r in scan_cache_dir().repos if r.repo_type == "model")
    except Exception:  # no cache yet, or an unreadable one: nothing to list
        return []


@router.get("", response_model=ModelList)
def list_models(ctx: CtxDep, _tenant: TenantDep) -> ModelList:
    data = [ModelOut(id="demo", source="demo")]
    data += [ModelOut(id=name, source="registered") for name in sorted(ctx.settings.model_registry)]
    if ctx.settings.allow_hub_models:
        data += [ModelOut(id=rid, source="hub_cache") for rid in _hub_cached()]
    return ModelList(data=data)
