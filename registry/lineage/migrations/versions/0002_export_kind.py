"""Exported variants: a third kind beside full models and adapters.

An export (a SavedModel, TFLite or ONNX file, or a Hugging Face folder) is a
variant of its own with a parent edge, but not a KerasHub preset.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KINDS_BEFORE = ("full", "adapter")
_KINDS_AFTER = ("full", "adapter", "export")


def _in_list(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _replace_kind_check(kinds: tuple[str, ...]) -> None:
    # SQLite cannot alter a constraint: batch mode copies the table, portable to Postgres.
    with op.batch_alter_table("variants") as batch:
        batch.drop_constraint("ck_variants_kind", type_="check")
        batch.create_check_constraint("ck_variants_kind", _in_list("kind", kinds))


def upgrade() -> None:
    _replace_kind_check(_KINDS_AFTER)


def downgrade() -> None:
    op.execute("DELETE FROM variants WHERE kind = 'export'")
    _replace_kind_check(_KINDS_BEFORE)
