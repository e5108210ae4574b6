"""Parsing of a single-range `Range: bytes=...` header (RFC 9110)."""

from __future__ import annotations

import re

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Return inclusive (start, end), None for "whole file", or raise RangeNotSatisfiable.

    Multi-range requests are answered with the whole file, which RFC 9110 allows.
    """
    if not header:
        return None
    m = _RANGE.match(header.strip().replace(" ", ""))
    if not m:
        if header.strip().startswith("bytes=") and "," in header:
            return None
        raise RangeNotSatisfiable(header)
    first, last = m.groups()
    if first == "" and last == "":
        raise RangeNotSatisfiable(header)
    if first == "":  # suffix range: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return max(0, size - n), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size or (last != "" and int(last) < start):
        raise RangeNotSatisfiable(header)
    return start, end
