"""estimated_finish from the phase history (pure function; no servers needed)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from core.db.models import EditJob
from core.jobs.view import estimated_finish

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _job(phase: str, done: int, total: int, status: str = "running", method: str = "paper") -> EditJob:
    return EditJob(
        status=status, started_at=T0, progress_phase=phase, progress_done=done, progress_total=total,
        config={"method": method},
    )


def test_evaluate_before_and_after_are_told_apart() -> None:
    now = T0 + timedelta(seconds=100)
    before = estimated_finish(_job("evaluate", 5, 10), ["load", "evaluate"], now)
    after = estimated_finish(
        _job("evaluate", 5, 10), ["load", "evaluate", "capture", "solve", "evaluate"], now
    )
    assert before is not None and after is not None
    assert before > after > now  # halfway through the first pass means more work left than the second


def test_no_estimate_without_progress_or_when_finished() -> None:
    assert estimated_finish(_job("load", 0, 1), ["load"], T0 + timedelta(seconds=5)) is None
    assert estimated_finish(_job("save", 3, 3, status="succeeded"), ["save"]) is None
    assert estimated_finish(_job("capture", 1, 2), [], T0) is None


def test_repeated_layer_phases_stay_in_place() -> None:
    seen = ["load", "evaluate", "capture", "solve", "apply", "capture", "solve", "apply"]
    eta = estimated_finish(_job("apply", 1, 1), seen, T0 + timedelta(seconds=60))
    assert eta is not None and eta > T0 + timedelta(seconds=60)


def test_a_search_jobs_estimate_moves_on_through_its_confirmation() -> None:
    """The default method generates on validation prompts after its screen (about a third of its wall time on the
    demo model); that phase must count as work still ahead, and progress through it must bring the finish nearer."""
    now = T0 + timedelta(seconds=600)
    seen = ["load", "evaluate", "search", "capture", "search"]
    screened = estimated_finish(_job("search", 18, 18, method="search"), seen, now)
    confirming = estimated_finish(_job("confirm", 6, 12, method="search"), [*seen, "confirm"], now)
    assert screened is not None and confirming is not None
    assert screened > confirming > now
