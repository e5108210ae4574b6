"""Per-job result destinations: where a succeeded job's model folder is also written, in Hugging Face layout.

Only under roots the operator lists in LINGUA_EDIT_DESTINATION_ROOTS (server directories and s3:// prefixes):
the client's string is normalised and matched against them, never used as a path on its own.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import PurePosixPath


@dataclass(frozen=True)
class Destination:
    kind: str  # "local" | "s3"
    location: str  # normalised: an absolute directory, or s3://bucket/prefix
    bucket: str | None = None
    prefix: str | None = None


class DestinationError(ValueError):
    """A destination that is refused (the API answers 422 `invalid_destination` naming `destination`) or, in
    the worker, could not be written (an error event; the job still succeeds)."""


def _bad(message: str) -> DestinationError:
    return DestinationError(message)


def _split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


def parse_destination(value: str, roots: list[str]) -> Destination:
    """The normalised destination, or DestinationError (not under an allowed root, `..`, relative)."""
    if not roots:
        raise _bad("this server accepts no destinations (LINGUA_EDIT_DESTINATION_ROOTS is empty)")
    if "\x00" in value or "\\" in value:
        raise _bad("destination contains characters that are not allowed")
    if ".." in PurePosixPath(value.removeprefix("s3://")).parts:
        raise _bad("destination must not contain '..'")
    if value.startswith("s3://"):
        bucket, prefix = _split_s3(value)
        if not bucket or not prefix:
            raise _bad("an S3 destination is s3://bucket/prefix")
        for root in roots:
            if root.startswith("s3://"):
                rb, rp = _split_s3(root)
                if bucket == rb and (not rp or prefix.startswith(rp + "/")):
                    return Destination("s3", f"s3://{bucket}/{prefix}", bucket, prefix)
        raise _bad("destination is not under an S3 prefix this server allows")
    if not value.startswith("/"):
        raise _bad("destination must be s3://bucket/prefix or an absolute directory")
    path = posixpath.normpath(value)
    for root in roots:
        if root.startswith("s3://"):
            continue
        r = posixpath.normpath(root)
        if path != r and path.startswith(r.rstrip("/") + "/"):
            return Destination("local", path)
    raise _bad("destination is not under a directory this server allows")
