"""Lineage store: which variant was derived from which, and how."""

from registry.lineage.entities import LineageEdge, LineageVariant
from registry.lineage.store import LineageStore

__all__ = ["LineageEdge", "LineageStore", "LineageVariant"]
