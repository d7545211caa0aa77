"""Aliases of registered models read straight from a home's own MLflow SQLite file, without MLflow.

`gpt2reg show` prints a variant's aliases and `NAME@ALIAS` names a variant: both only read
MLflow's alias table, yet opening MLflow's client to read it costs about 2 s (importing
MLflow, then its store's start-up checks), four times all the rest of `show`. Where MLflow's
store is a SQLite file of this machine, the table is read here in one query, read-only, with
Python's own sqlite3 (SQLAlchemy's import alone is 0.16 s); any
other store (a tracking server, a database server), a file without the table, or a schema this
code does not know gives None, and the caller asks MLflow's client as before.
"""

from __future__ import annotations

from pathlib import Path

from registry.home import Home

# MLflow 3 keeps models per workspace; a store without workspaces enabled has only this one.
DEFAULT_WORKSPACE = "default"


def aliases(home: Home, name: str, version: int) -> list[str] | None:
    """The aliases pointing at NAME/VERSION, sorted; None when they cannot be read this way."""
    rows = _query(home, "SELECT alias FROM registered_model_aliases WHERE name = :name AND version = :version",
                  name=name, version=int(version))
    return None if rows is None else sorted(row[0] for row in rows)


def version(home: Home, name: str, alias: str) -> int | None:
    """The version NAME@ALIAS points at; None when the alias is not there or cannot be read this way."""
    rows = _query(home, "SELECT version FROM registered_model_aliases WHERE name = :name AND alias = :alias",
                  name=name, alias=alias)
    return int(rows[0][0]) if rows else None


def _query(home: Home, sql: str, **values) -> list[tuple] | None:
    import sqlite3
    from urllib.parse import quote

    prefix = "sqlite:///"
    database = home.tracking_uri[len(prefix):] if home.tracking_uri.startswith(prefix) else ""
    # A tracking server, a database server, a URL with options or an in-memory database: MLflow's client answers.
    if not database or "?" in database or database.startswith((":memory:", "file:")):
        return None
    path = Path(database)
    if not path.is_file():
        return None
    try:
        # mode=ro: reading never creates or changes MLflow's file.
        connection = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, timeout=30.0)
    except sqlite3.Error:
        return None
    try:
        try:
            return connection.execute(sql + " AND workspace = :workspace",
                                      {**values, "workspace": DEFAULT_WORKSPACE}).fetchall()
        except sqlite3.OperationalError:  # an MLflow from before workspaces
            return connection.execute(sql, values).fetchall()
    except sqlite3.Error:
        return None
    finally:
        connection.close()
