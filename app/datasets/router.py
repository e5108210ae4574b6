from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, UploadFile

from app.datasets import service
from app.datasets.schemas import DatasetOut
from app.deps import CtxDep, SessionDep, TenantDep
from app.errors import ApiError, ErrorEnvelope

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def to_out(ds) -> DatasetOut:  # noqa: ANN001
    return DatasetOut(
        id=ds.id,
        filename=ds.filename,
        format=ds.format,
        size=ds.size,
        sha256=ds.sha256,
        rows=ds.rows,
        languages=ds.languages or [],
        created_at=ds.created_at,
    )


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    responses={
        400: {"model": ErrorEnvelope, "description": "the body is not valid multipart/form-data"},
        413: {"model": ErrorEnvelope, "description": "the file is larger than the server's max_upload_bytes"},
        507: {"model": ErrorEnvelope, "description": "the server has no room to store the file"},
    },
)
def upload_dataset(
    ctx: CtxDep,
    session: SessionDep,
    tenant: TenantDep,
    file: Annotated[UploadFile, File(description="a non-empty .jsonl or .csv calibration file")],
) -> DatasetOut:
    if file.size is not None and file.size > ctx.settings.max_upload_bytes:
        raise ApiError(
            413, "payload_too_large", f"dataset larger than {ctx.settings.max_upload_bytes} bytes", "file"
        )
    ds = service.create_from_upload(ctx, session, tenant, file.filename or "", file.file)
    session.commit()  # 201 only once the row is visible to every other connection
    return to_out(ds)


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(session: SessionDep, tenant: TenantDep, dataset_id: str) -> DatasetOut:
    return to_out(service.get_dataset(session, tenant, dataset_id))
