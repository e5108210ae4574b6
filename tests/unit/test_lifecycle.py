"""The job lifecycle (core/jobs/lifecycle.py) on the real database layer (SQLite file migrated to head):

- property: whatever sequence of transition requests arrives (by any actor, with any expected status), the
  row only ever takes steps the table allows, terminal states are final, and each call's answer is the
  one the table predicts;
- compare-and-set: of two sessions racing for the same transition, exactly one wins;
- nothing outside the lifecycle module writes a status.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from core.db.migrate import upgrade
from core.db.models import EditJob
from core.db.session import make_engine, make_session_factory
from core.ids import new_id
from core.jobs import lifecycle
from core.jobs.lifecycle import INITIAL, STATUSES, TERMINAL, TRANSITIONS, IllegalTransitionError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('lifecycle') / 'jobs.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


def _new_job(sessions: sessionmaker[Session]) -> str:
    job_id = new_id("edit")
    with sessions() as s:
        s.add(EditJob(id=job_id, tenant="t", status=INITIAL, model="tiny", config={}, request_hash="x"))
        s.commit()
    return job_id


def _status(sessions: sessionmaker[Session], job_id: str) -> str:
    with sessions() as s:
        job = s.get(EditJob, job_id)
        assert job is not None
        return job.status


def _well_formed(name: str) -> st.SearchStrategy:
    t = TRANSITIONS[name]
    return st.tuples(st.just(name), st.sampled_from(t.by), st.sampled_from([None, *t.sources]))


# Mostly requests the table knows (so runs get past `queued`), some of anything (refusals must write nothing).
anything = st.tuples(
    st.sampled_from([*TRANSITIONS, "no_such_transition"]),
    st.sampled_from(["api", "worker", "reaper"]),
    st.sampled_from([None, *STATUSES]),
)
requests = st.lists(st.one_of(st.sampled_from(sorted(TRANSITIONS)).flatmap(_well_formed), anything), max_size=20)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=requests)
def test_no_sequence_leaves_the_table(sessions: sessionmaker[Session], steps: list) -> None:
    job_id = _new_job(sessions)
    allowed = lifecycle.edges()
    status = INITIAL
    for name, actor, expect in steps:
        t = TRANSITIONS.get(name)
        legal = t is not None and actor in t.by and (expect is None or expect in t.sources)
        with sessions() as s:
            if not legal:
                with pytest.raises(IllegalTransitionError):
                    lifecycle.move(s, job_id, name, actor, expect=expect)
                s.rollback()
                assert _status(sessions, job_id) == status  # a refused request writes nothing
                continue
            assert t is not None
            ok = lifecycle.move(s, job_id, name, actor, expect=expect)
            s.commit()
        after = _status(sessions, job_id)
        sources = t.sources if expect is None else (expect,)
        assert ok == (status in sources), (name, status, ok)  # the compare-and-set answers truthfully
        assert after == ((t.target or status) if ok else status)
        assert after in STATUSES and (status, after) in allowed | {(status, status)}
        if status in TERMINAL:
            assert after == status  # terminal states are final
        status = after


def test_the_table_itself() -> None:
    edges = lifecycle.edges()
    assert not {(a, b) for a, b in edges if a in TERMINAL}, "a terminal state has a way out"
    reachable, frontier = {INITIAL}, [INITIAL]
    while frontier:
        here = frontier.pop()
        for a, b in edges:
            if a == here and b not in reachable:
                reachable.add(b)
                frontier.append(b)
    assert reachable == set(STATUSES)  # no state is dead code, every one is reachable from INITIAL


def test_compare_and_set_has_one_winner(sessions: sessionmaker[Session]) -> None:
    job_id = _new_job(sessions)
    with sessions() as a, sessions() as b:
        won_a = lifecycle.move(a, job_id, "claim", "worker", attempts=1)
        a.commit()
        won_b = lifecycle.move(b, job_id, "cancel_queued", "api")  # the API's cancel arrives just after
        b.commit()
    assert (won_a, won_b) == (True, False)
    assert _status(sessions, job_id) == "running"


def test_the_caller_cannot_pick_the_status(sessions: sessionmaker[Session]) -> None:
    job_id = _new_job(sessions)
    with sessions() as s, pytest.raises(IllegalTransitionError):
        lifecycle.move(s, job_id, "claim", "worker", status="succeeded")


def _status_writes(path: Path) -> list[str]:
    """`status=<anything>` in an update/values/EditJob(...) call, or `x.status = ...`, outside the lifecycle."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and target.attr == "status":
                    found.append(f"{path}:{node.lineno}")
        if isinstance(node, ast.Call) and any(k.arg == "status" for k in node.keywords):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            value = next(k.value for k in node.keywords if k.arg == "status")
            if name in ("values", "update", "EditJob") and not (isinstance(value, ast.Name) and value.id == "INITIAL"):
                found.append(f"{path}:{node.lineno}")
    return found


def test_only_the_lifecycle_writes_a_status() -> None:
    files = [p for d in ("app", "core", "worker") for p in (ROOT / d).rglob("*.py") if "engine" not in p.parts]
    files = [p for p in files if p != ROOT / "core/jobs/lifecycle.py"]
    assert len(files) > 30
    assert [w for p in files for w in _status_writes(p)] == []
