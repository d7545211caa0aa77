"""Lineage store: which variant was derived from which, and how.

`LineageStore` (SQLAlchemy) is imported on first use: a command that only reads a local
store does it through `registry.lineage.reads`, without importing SQLAlchemy.
"""

from registry.lineage.entities import LineageEdge, LineageVariant

__all__ = ["LineageEdge", "LineageStore", "LineageVariant"]


def __getattr__(name):
    if name == "LineageStore":
        from registry.lineage.store import LineageStore

        return LineageStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
