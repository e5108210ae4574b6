from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel


class DatasetOut(BaseModel):
    id: str
    object: Literal["dataset"] = "dataset"
    filename: str
    format: str
    size: int
    sha256: str
    rows: int
    languages: list[str]
    created_at: datetime
