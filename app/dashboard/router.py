"""A small read-only dashboard: server-rendered page shells (Jinja2) whose script calls the JSON API.

The pages carry no job data and need no key to load. The API key is typed into the page, kept in the tab's
sessionStorage only (never a URL or a cookie) and sent as `Authorization: Bearer` by the page's fetch calls,
so the dashboard sees exactly what the key's tenant sees through /v1/edits. Charts and downloads are fetched
with the header and shown through blob: URLs.
"""

from __future__ import annotations

from pathlib import Path as FsPath
from typing import Annotated

import jinja2
from fastapi import APIRouter, Path, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

HERE = FsPath(__file__).parent
# autoescape everywhere (Starlette's default only escapes names ending in .html; ours end in .html.j2)
templates = Jinja2Templates(
    env=jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
)
router = APIRouter(prefix="/dashboard", include_in_schema=False)

# No third-party origin, no inline script, no framing; images only from the API or blob:/data: URLs.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' blob: data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
JobId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


@router.get("", response_class=HTMLResponse)
def job_list(request: Request) -> HTMLResponse:
    return templates.TemplateResponse(request, "list.html.j2", {"page": "list"}, headers=SECURITY_HEADERS)


@router.get("/", response_class=RedirectResponse)
def job_list_slash() -> RedirectResponse:
    return RedirectResponse("/dashboard")


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: JobId) -> HTMLResponse:
    return templates.TemplateResponse(
        request, "job.html.j2", {"page": "job", "job_id": job_id}, headers=SECURITY_HEADERS
    )


@router.get("/static/dashboard.js")
def script() -> FileResponse:
    return FileResponse(HERE / "static" / "dashboard.js", media_type="text/javascript", headers=SECURITY_HEADERS)
