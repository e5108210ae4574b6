"""Destination parsing against the operator's roots, and the JSON log format with the job id."""

from __future__ import annotations

import json
import logging

import pytest

from core.destinations import DestinationError, parse_destination
from core.logs import JobIdFilter, JsonFormatter, job_id_var

ROOTS = ["/srv/models", "s3://registry/edits"]


@pytest.mark.parametrize(
    ("value", "kind", "location"),
    [
        ("/srv/models/team-a/run-1", "local", "/srv/models/team-a/run-1"),
        ("/srv/models//team-a/./run-1/", "local", "/srv/models/team-a/run-1"),
        ("s3://registry/edits/team-a/run-1", "s3", "s3://registry/edits/team-a/run-1"),
    ],
)
def test_allowed(value: str, kind: str, location: str) -> None:
    d = parse_destination(value, ROOTS)
    assert (d.kind, d.location) == (kind, location)


@pytest.mark.parametrize(
    "value",
    [
        "/srv/models",  # the root itself
        "/srv/models/../etc",
        "/srv/modelsX/a",
        "/etc/passwd",
        "relative/dir",
        "s3://registry/edits",
        "s3://registry/editsX/a",
        "s3://other/edits/a",
        "s3://registry/edits/../x",
        "/srv/models/a\x00b",
        "file:///srv/models/a",
    ],
)
def test_refused(value: str) -> None:
    with pytest.raises(DestinationError):
        parse_destination(value, ROOTS)


def test_refused_without_roots() -> None:
    with pytest.raises(DestinationError, match="accepts no destinations"):
        parse_destination("/srv/models/a", [])


def test_json_log_lines_carry_the_job_id() -> None:
    record = logging.LogRecord("lingua_edit.worker", logging.INFO, __file__, 1, "phase %s", ("load",), None)
    token = job_id_var.set("edit_abc")
    try:
        JobIdFilter().filter(record)
    finally:
        job_id_var.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["job_id"] == "edit_abc" and line["message"] == "phase load" and line["level"] == "INFO"
    other = logging.LogRecord("x", logging.INFO, __file__, 1, "no job", (), None)
    JobIdFilter().filter(other)
    assert json.loads(JsonFormatter().format(other))["job_id"] is None
