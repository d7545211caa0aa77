"""Operations of plugins: a variant's operation is any short lowercase name.

A third-party capability makes variants with its own operation (a `prune`
plugin records `prune`), so the fixed list of built-in operations is no longer
a constraint of the table; the store checks the name's form instead.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A frozen copy, not an import from models.py: the downgrade must restore the 0002 schema.
_BUILT_IN_OPERATIONS = ("create", "import", "finetune", "lora", "merge", "quantize", "distill", "export")


def _in_list(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    # SQLite cannot alter a constraint: batch mode copies the table, portable to Postgres.
    with op.batch_alter_table("variants") as batch:
        batch.drop_constraint("ck_variants_operation", type_="check")


def downgrade() -> None:
    # Variants of plugin operations cannot exist in the 0002 schema; their edges go first (a
    # migration's connection may not enforce ON DELETE CASCADE).
    plugin_made = f"SELECT id FROM variants WHERE NOT ({_in_list('operation', _BUILT_IN_OPERATIONS)})"
    op.execute(f"DELETE FROM edges WHERE parent_id IN ({plugin_made}) OR child_id IN ({plugin_made})")
    op.execute(f"DELETE FROM variants WHERE id IN ({plugin_made})")
    with op.batch_alter_table("variants") as batch:
        # The name as 0001 gave it: the naming convention applies to both, so `upgrade` finds it again.
        batch.create_check_constraint("ck_variants_operation", _in_list("operation", _BUILT_IN_OPERATIONS))
