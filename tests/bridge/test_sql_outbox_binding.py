"""Which transaction an emit belongs to: the SQL outbox's binding on SQLite, no relay.

The rows are read back from the table (the relay is not started): what is there is what a
relay would send.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

sa = pytest.importorskip("sqlalchemy", reason="the [sql] extra is not installed")

from sqlalchemy.orm import Session, scoped_session, sessionmaker  # noqa: E402

from bridge import BridgeError, SqlOutbox  # noqa: E402


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def outbox(engine: sa.Engine) -> SqlOutbox:
    return SqlOutbox(engine)


def emit(outbox: SqlOutbox, name: str) -> None:
    outbox.append("orders", name.encode(), None, [("ce_type", b"order.placed")])


def stored(engine: sa.Engine, outbox: SqlOutbox) -> list[str]:
    t = outbox.table
    with engine.connect() as conn:
        return [v.decode() for v in conn.execute(sa.select(t.c.value).order_by(t.c.id)).scalars()]


def test_nested_savepoints(engine: sa.Engine, outbox: SqlOutbox) -> None:
    with Session(engine) as session, session.begin(), outbox.bind(session):
        emit(outbox, "a")
        outer = session.begin_nested()
        emit(outbox, "b")
        inner = session.begin_nested()
        emit(outbox, "c")
        inner.commit()  # released into ``outer``, which then rolls back: c goes with it
        outer.rollback()
        emit(outbox, "d")
        kept = session.begin_nested()
        emit(outbox, "e")
        dropped = session.begin_nested()
        emit(outbox, "f")
        dropped.rollback()
        kept.commit()
        emit(outbox, "g")
    assert stored(engine, outbox) == ["a", "d", "e", "g"]  # in emit order


def test_rows_wait_for_the_outermost_commit(engine: sa.Engine, outbox: SqlOutbox) -> None:
    with Session(engine) as session:
        with outbox.bind(session):
            emit(outbox, "a")
        assert stored(engine, outbox) == []  # nothing before the commit
        session.commit()  # after the block: still the bound session's transaction
        assert stored(engine, outbox) == ["a"]
        with outbox.bind(session):
            emit(outbox, "b")
        session.rollback()
        session.commit()  # a new, empty transaction: b went with the rollback
    assert stored(engine, outbox) == ["a"]


def test_scoped_session_binds_its_current_session(engine: sa.Engine, outbox: SqlOutbox) -> None:
    scoped = scoped_session(sessionmaker(engine))
    try:
        with outbox.bind(scoped):
            emit(outbox, "a")
        scoped.commit()
    finally:
        scoped.remove()
    assert stored(engine, outbox) == ["a"]


def test_binding_is_per_block_and_nests(engine: sa.Engine, outbox: SqlOutbox) -> None:
    with Session(engine) as first, Session(engine) as second:
        with outbox.bind(first):
            emit(outbox, "first")
            with outbox.bind(second):
                emit(outbox, "second")
            emit(outbox, "first again")
        second.rollback()
        first.commit()
    assert stored(engine, outbox) == ["first", "first again"]
    with pytest.raises(BridgeError, match="outside `with outbox"):
        emit(outbox, "unbound")
