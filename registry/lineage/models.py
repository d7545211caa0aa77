"""ORM tables of the lineage store.

These rows never leave `LineageStore`: callers get the frozen dataclasses of
`registry.lineage.entities` through `to_entity()`. A schema change here needs a
new revision under `migrations/versions/`; the store never creates tables from
this metadata.
"""

from __future__ import annotations

import copy
import re
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    func,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from registry.lineage.entities import LineageEdge, LineageVariant

KINDS = ("full", "adapter", "export")
# The built-in capabilities' operations. A plugin's capability names its own (`Capability.operation`,
# e.g. "prune"), so the store accepts any short lowercase name, not only these.
OPERATIONS = ("create", "import", "finetune", "lora", "merge", "quantize", "distill", "export")
OPERATION_NAME = re.compile(r"[a-z][a-z0-9_-]{0,15}")  # fits the String(16) columns

# Named constraints keep migrations portable: SQLite batch mode and Postgres
# ALTERs both need a name to drop or alter a constraint later.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _in_list(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite keeps no offset and hands back naive values; without this, entities
    would carry naive datetimes on SQLite and aware ones on Postgres.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware datetime")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # SQLite's CURRENT_TIMESTAMP and our stored values are UTC without an offset.
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        dict[str, Any]: JSON,
        dict[str, float]: JSON,
        dict[str, str]: JSON,
        datetime: UTCDateTime,
    }


class Variant(Base):
    __tablename__ = "variants"
    __table_args__ = (
        UniqueConstraint("name", "version"),
        CheckConstraint(_in_list("kind", KINDS), name="kind"),
        CheckConstraint("version >= 1", name="version_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    operation: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]]
    # BigInteger: Postgres INTEGER is 32-bit and a gpt2-xl checkpoint is ~6 GB.
    parameters: Mapped[int] = mapped_column(BigInteger)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    content_hash: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str | None] = mapped_column(String(64))
    artifact_uri: Mapped[str | None] = mapped_column(String(1024))
    metrics: Mapped[dict[str, float]]
    tags: Mapped[dict[str, str]]
    created_at: Mapped[datetime] = mapped_column(default=_utcnow, server_default=func.now())

    def to_entity(self) -> LineageVariant:
        # Deep copies so that an entity never aliases JSON still held by a session.
        return LineageVariant(
            id=self.id,
            name=self.name,
            version=self.version,
            kind=self.kind,
            operation=self.operation,
            config=copy.deepcopy(self.config),
            parameters=self.parameters,
            size_bytes=self.size_bytes,
            content_hash=self.content_hash,
            run_id=self.run_id,
            artifact_uri=self.artifact_uri,
            metrics=dict(self.metrics),
            tags=dict(self.tags),
            created_at=self.created_at,
        )


class Edge(Base):
    __tablename__ = "edges"
    __table_args__ = (
        UniqueConstraint("parent_id", "child_id", "operation"),
        # parent_id is covered by the unique constraint's leading column;
        # children() and graph() walk by child_id.
        Index(None, "child_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("variants.id", ondelete="CASCADE"))
    child_id: Mapped[int] = mapped_column(ForeignKey("variants.id", ondelete="CASCADE"))
    operation: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(32))
    settings: Mapped[dict[str, Any]]
    metric_deltas: Mapped[dict[str, float]]

    # lazy="raise": a query that forgets to load the endpoints fails loudly
    # instead of issuing one SELECT per edge.
    parent: Mapped[Variant] = relationship(foreign_keys=[parent_id], lazy="raise")
    child: Mapped[Variant] = relationship(foreign_keys=[child_id], lazy="raise")

    def to_entity(self) -> LineageEdge:
        return LineageEdge(
            parent_ref=f"{self.parent.name}/{self.parent.version}",
            child_ref=f"{self.child.name}/{self.child.version}",
            operation=self.operation,
            role=self.role,
            settings=copy.deepcopy(self.settings),
            metric_deltas=dict(self.metric_deltas),
        )
