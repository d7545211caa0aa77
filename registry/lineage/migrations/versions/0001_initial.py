"""Variants and the edges between them.

Revision ID: 0001
Revises:
Create Date: 2025-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies, not imports from models.py: this revision must keep creating
# the 0001 schema even after the models move on.
_KINDS = ("full", "adapter")
_OPERATIONS = ("create", "import", "finetune", "lora", "merge", "quantize", "distill", "export")


def _in_list(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "variants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("operation", sa.String(16), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("parameters", sa.BigInteger(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("artifact_uri", sa.String(1024), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name="pk_variants"),
        sa.UniqueConstraint("name", "version", name="uq_variants_name_version"),
        sa.CheckConstraint(_in_list("kind", _KINDS), name="ck_variants_kind"),
        sa.CheckConstraint(_in_list("operation", _OPERATIONS), name="ck_variants_operation"),
        sa.CheckConstraint("version >= 1", name="ck_variants_version_positive"),
    )
    op.create_table(
        "edges",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=False),
        sa.Column("child_id", sa.Integer(), nullable=False),
        sa.Column("operation", sa.String(16), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("metric_deltas", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_edges"),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["variants.id"], name="fk_edges_parent_id_variants", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["child_id"], ["variants.id"], name="fk_edges_child_id_variants", ondelete="CASCADE"
        ),
        sa.UniqueConstraint(
            "parent_id", "child_id", "operation", name="uq_edges_parent_id_child_id_operation"
        ),
    )
    op.create_index("ix_edges_child_id", "edges", ["child_id"])


def downgrade() -> None:
    op.drop_index("ix_edges_child_id", table_name="edges")
    op.drop_table("edges")
    op.drop_table("variants")
