"""`lingua-edit openapi`: the spec without servers, and docs/openapi.json kept in step with the code."""

from __future__ import annotations

import json
from pathlib import Path

from app.cli import main
from tests.service.conftest import ROOT


def test_openapi_export(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)  # the default data dir is ./data: it must not appear
    out = tmp_path / "spec" / "openapi.json"
    assert main(["openapi", "--out", str(out)]) == 0
    spec = json.loads(out.read_text())
    assert spec["openapi"].startswith("3.") and spec["info"]["title"] == "lingua-edit"
    paths = spec["paths"]
    for p in (
        "/v1/edits",
        "/v1/edits/{job_id}",
        "/v1/edits/{job_id}/cancel",
        "/v1/edits/{job_id}/events",
        "/v1/edits/{job_id}/artifacts",
        "/v1/edits/{job_id}/artifacts/{name}",
        "/v1/datasets",
        "/v1/datasets/{dataset_id}",
        "/v1/models",
        "/v1/webhook-secret",
        "/healthz",
        "/readyz",
    ):
        assert p in paths, p
    assert set(paths["/v1/edits"]) == {"get", "post"}
    create = paths["/v1/edits"]["post"]
    assert "202" in create["responses"]
    # errors are documented as the envelope, and auth as a bearer scheme
    assert create["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorEnvelope")
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "webhook_url" in spec["components"]["schemas"]["EditCreate"]["properties"]
    assert {"base_revision", "destination"} <= set(spec["components"]["schemas"]["EditCreate"]["properties"])
    assert "delete" in paths["/v1/edits/{job_id}"]
    assert {"get", "head"} <= set(paths["/v1/edits/{job_id}/artifacts/{name}"])
    assert {"200", "206", "304", "307", "416"} <= set(paths["/v1/edits/{job_id}/artifacts/{name}"]["get"]["responses"])
    assert {"get", "post"} <= set(paths["/v1/webhook-secret"])
    assert [p.name for p in tmp_path.iterdir()] == ["spec"]  # no data dir, database or storage created


def test_committed_spec_is_current(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert main(["openapi"]) == 0
    generated = capsys.readouterr().out
    committed = (ROOT / "docs" / "openapi.json").read_text()
    assert json.loads(generated) == json.loads(committed), "regenerate: lingua-edit openapi --out docs/openapi.json"
