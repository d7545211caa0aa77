"""Hostile names and paths: refused with exit 2 and one line, and nothing written anywhere.

Model names, aliases, references, the paths of files read (data, tasks,
templates) and export destinations each meet path traversal (`../`, absolute
paths, URL escapes single and double), backslashes, `#` and `?`, NUL and other
control characters, over-long names and paths, Unicode look-alikes of '/',
'.' and Latin letters, invisible direction and zero-width characters, and
symbolic links pointing out of the asked-for place or into the store.
Before and after each command the store and a sibling "outside" folder are
snapshotted: a refused command leaves both exactly as they were.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import store_snapshot

NAME = "invalid model name"
ALIAS = "invalid alias"
VERSION = "invalid version"

# (command, expected fragment of the one error line). Placeholders: {outside} an empty-ish folder beside
# the store, {home} the store, {text} a text file, {fifo} a named pipe, {link_out} a link to a folder outside,
# {dangling} a link to nothing, {link_home} a link to the store, {loop} a link to itself, {file} a plain file.
HOSTILE = [
    # model names: create, import and --name
    (["create", "../evil"], NAME),
    (["create", "/tmp/evil"], NAME),
    (["create", "%2e%2e"], NAME),
    (["create", "%252e%252e"], NAME),
    (["create", "evil\\name"], NAME),
    (["create", "name#fragment"], NAME),
    (["create", "name?query=1"], NAME),
    (["create", "nul\x00byte"], NAME),
    (["create", "new\nline"], NAME),
    (["create", "ansi\x1b[31m"], NAME),
    (["create", "x" * 101], NAME),
    (["create", "y" * 100_000], "(100,000 characters)"),
    (["create", "\uff42\uff41\uff53\uff45"], NAME),  # fullwidth "base"
    (["create", "a\uff0fb"], NAME),  # fullwidth solidus
    (["create", "a\u2024\u2024b"], NAME),  # one-dot leaders
    (["create", "b\u0430se"], NAME),  # Cyrillic a
    (["create", "base\u202etxt"], NAME),  # right-to-left override
    (["create", "ba\u200bse"], NAME),  # zero-width space
    (["create", "..."], NAME),
    (["create", "a..b"], "may not end with '.' or hold '..'"),
    (["create", "trailing."], "may not end with '.' or hold '..'"),
    (["import", "../evil", "{outside}"], NAME),
    (["finetune", "base", "--data", "{text}", "--steps", "1", "--name", "../../evil"], NAME),
    (["export", "base", "--format", "keras", "--out", "{outside}/x", "--name", "a/b"], NAME),
    # aliases
    (["alias", "base/1", "../x"], ALIAS),
    (["alias", "base/1", "a%2fb"], ALIAS),
    (["alias", "base/1", "ch\u0430mpion"], ALIAS),  # Cyrillic a
    (["alias", "base/1", "x\x00"], ALIAS),
    (["alias", "base/1", "a#b"], ALIAS),
    (["alias", "base/1", "a" * 101], ALIAS),
    (["alias", "base/1", "v7"], "reserved"),
    # references: NAME, NAME/VERSION, NAME@alias
    (["show", "base/../1"], VERSION),
    (["show", "base/1/.."], VERSION),
    (["show", "../../etc/passwd"], NAME),
    (["show", "/etc/passwd"], NAME),
    (["show", "base%2f1"], NAME),
    (["show", "base/%31"], VERSION),
    (["show", "base/\u00b2"], VERSION),  # superscript two: str.isdigit() says yes, int() says no
    (["show", "base/\uff11"], VERSION),  # fullwidth one
    (["show", "base/99999999999999999999"], VERSION),  # past SQLite's integers
    (["show", "base/" + "9" * 5000], VERSION),  # past Python's integer-from-text limit
    (["show", "base/0"], VERSION),
    (["show", "base@../x"], ALIAS),
    (["show", "base@a#b"], ALIAS),
    (["show", "base/1?x=1"], VERSION),
    (["show", "base#1"], NAME),
    (["show", "base\x00"], NAME),
    (["show", "base\r\n1"], NAME),
    (["generate", "b\u0430se", "hi"], NAME),
    # export destinations
    (["export", "base", "--format", "keras", "--out", "{outside}/nul\x00byte"], "control character U+0000"),
    (["export", "base", "--format", "keras", "--out", "{outside}/new\nline"], "control character U+000A"),
    (["export", "base", "--format", "keras", "--out", "{outside}/" + "x" * 300], "the 255 the file system allows"),
    (["export", "base", "--format", "keras", "--out", "{outside}/" + "y/" * 2100], "a path may hold"),
    (["export", "base", "--format", "keras", "--out", "{outside}/%2e%2e/%2e%2e/x"], "URL escape '%2e'"),
    (["export", "base", "--format", "keras", "--out", "{outside}/%252e%252e/x"], "URL escape '%25'"),
    (["export", "base", "--format", "keras", "--out", "{outside}\\..\\x"], "backslash"),
    (["export", "base", "--format", "keras", "--out", "{outside}/..\uff0fx"], "FULLWIDTH SOLIDUS"),
    (["export", "base", "--format", "keras", "--out", "{outside}/\u2024\u2024/x"], "ONE DOT LEADER"),
    (["export", "base", "--format", "keras", "--out", "{outside}/x\u202egpj"], "RIGHT-TO-LEFT OVERRIDE"),
    (["export", "base", "--format", "keras", "--out", "{outside}/x\u200b"], "ZERO WIDTH SPACE"),
    (["export", "base", "--format", "keras", "--out", "{link_out}"], "is a symbolic link"),
    (["export", "base", "--format", "keras", "--out", "{dangling}"], "is a symbolic link"),
    (["export", "base", "--format", "keras", "--out", "{link_home}"], "is a symbolic link"),
    (["export", "base", "--format", "keras", "--out", "{link_home}/artifacts/x"], "inside the registry home"),
    (["export", "base", "--format", "keras", "--out", "{home}/artifacts/x"], "inside the registry home"),
    (["export", "base", "--format", "keras", "--out", "{home}/../{home_name}/.staging/x"], "inside the registry home"),
    (["export", "base", "--format", "keras", "--out", "{home}/lineage.db"], "not an empty folder"),
    (["export", "base", "--format", "keras", "--out", "{home}/mlflow.db-journal"], "inside the registry home"),
    (["export", "base", "--format", "keras", "--out", "{file}/x"], "which is a file"),
    (["export", "base", "--format", "keras", "--out", "{loop}/x"], "a loop of symbolic links"),
    (["export", "base", "--format", "keras", "--out", ""], "export needs --out"),
    # paths of files read
    (["evaluate", "base", "--data", "{outside}/nul\x00byte.txt"], "control character U+0000"),
    (["evaluate", "base", "--data", "z" * 300], "the 255 the file system allows"),
    (["evaluate", "base", "--data", "/dev/zero"], "a device, pipe or socket"),
    (["evaluate", "base", "--data", "{fifo}"], "a device, pipe or socket"),
    (["evaluate", "base", "--data", "{loop}"], "a loop of symbolic links"),
    (["evaluate", "base", "--data", "%2e%2e/%2e%2e/etc/passwd"], "URL escape"),
    (["evaluate", "base", "--task", "{fifo}"], "a device, pipe or socket"),
    (["evaluate", "base", "--task", "{outside}"], "is a folder"),
    (["evaluate", "base", "--task", "task\u202elnosj.txt"], "RIGHT-TO-LEFT OVERRIDE"),
    (["evaluate", "base", "--task", "{task}", "--task-name", "../../evil"], "task name '../../evil'"),
    (["evaluate", "base", "--task", "{hash_task}"], "give --task-name"),
    (["generate", "base", "hi", "--template", "..\uff0ftemplate.txt"], "FULLWIDTH SOLIDUS"),
    (["generate", "base", "hi", "--template", "/dev/null"], "a device, pipe or socket"),
]


def _tree(root: Path) -> list[tuple[str, str, int]]:
    """Every entry under `root` (links not followed): its path, kind and size."""
    entries = []
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            path = Path(folder) / name
            info = path.lstat()
            kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
            entries.append((str(path.relative_to(root)), kind, 0 if kind == "dir" else info.st_size))
    return sorted(entries)


@pytest.fixture
def places(tmp_path, family_home, text_file):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not to be touched")
    links = tmp_path / "links"
    links.mkdir()
    (links / "link_out").symlink_to(outside)
    (links / "dangling").symlink_to(tmp_path / "nowhere")
    (links / "link_home").symlink_to(family_home)
    (links / "loop").symlink_to(links / "loop")
    os.mkfifo(tmp_path / "pipe")
    task = tmp_path / "task.jsonl"
    task.write_text('{"prompt": "one plus one is", "answer": " two"}\n', encoding="utf-8")
    hash_task = tmp_path / "a#b.jsonl"
    shutil.copyfile(task, hash_task)
    return {
        "outside": outside, "home": family_home, "home_name": family_home.name, "text": text_file,
        "fifo": tmp_path / "pipe", "link_out": links / "link_out", "dangling": links / "dangling",
        "link_home": links / "link_home", "loop": links / "loop", "file": outside / "keep.txt",
        "task": task, "hash_task": hash_task,
    }


def test_the_table_holds_at_least_forty_hostile_inputs():
    assert len(HOSTILE) >= 40


@pytest.mark.parametrize("args, message", HOSTILE, ids=[f"{i:02d}-{a[0]}" for i, (a, _) in enumerate(HOSTILE)])
def test_hostile_input_exits_2_with_one_line_and_writes_nothing(gpt2reg, places, tmp_path, args, message):
    args = [a.format(**places) if "{" in a else a for a in args]
    home = places["home"]
    store_before, around_before = store_snapshot(home), _tree(tmp_path)
    home_parent_before = sorted(p.name for p in home.parent.iterdir())

    result = gpt2reg(*args, "--home", home)

    assert result.exit_code == 2, result
    lines = [line for line in result.stderr.splitlines() if line.startswith(("error:", "Error:"))]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert len(lines[0]) < 400 and not any(ch < " " for ch in lines[0]), lines[0]
    assert store_snapshot(home) == store_before
    assert _tree(tmp_path) == around_before
    assert sorted(p.name for p in home.parent.iterdir()) == home_parent_before
    assert not Path("/tmp/evil").exists()


def test_an_out_naming_a_store_database_elsewhere_is_refused(tmp_path):
    from plugins.export import refuse_store_paths
    from registry.errors import UsageError
    from registry.home import Home

    databases = tmp_path / "databases"
    home = Home.resolve(tmp_path / "home", lineage_url=f"sqlite:///{databases / 'lineage.db'}",
                        tracking_uri=f"sqlite:///{databases / 'mlflow.db'}")
    for out in (databases / "lineage.db", databases / "mlflow.db", databases / "mlflow.db" / "x", tmp_path):
        with pytest.raises(UsageError, match="inside the registry home or its databases"):
            refuse_store_paths(out, home)
    refuse_store_paths(tmp_path / "exports" / "x", home)  # beside them is fine


def test_a_destination_turned_into_a_link_during_the_work_is_refused_before_anything_is_recorded(tmp_path):
    from registry import artifacts
    from registry.errors import UsageError

    source = tmp_path / "files"
    source.mkdir()
    (source / "model.weights.h5").write_bytes(b"weights")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    destination = tmp_path / "out"
    destination.symlink_to(elsewhere)
    with pytest.raises(UsageError, match="symbolic link"):
        artifacts.stage_delivery(source, destination)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "files", "out"]
    assert not any(elsewhere.iterdir())

    long_name = tmp_path / ("n" * 250)  # the partial copy's longer name still fits the file system
    partial = artifacts.stage_delivery(source, long_name)
    assert artifacts.publish_delivery(partial, long_name) == long_name
    assert (long_name / "model.weights.h5").read_bytes() == b"weights"


# -------------------------------------------------------------------- recorded locations


def _fake_preset(folder: Path) -> Path:
    """Files that would pass for a variant's preset, had the registry followed a row out of its store."""
    preset = folder / "model" / "artifacts" / "preset"
    preset.mkdir(parents=True)
    (preset / "gpt2reg.json").write_text("{}")
    return folder


@pytest.fixture
def copied_home(tmp_path, family_home):
    """A copy of the family store, opened once: its rows now name its own artifact store."""
    from registry.home import Home
    from registry.relocation import relocate

    copy = tmp_path / "copy"
    shutil.copytree(family_home, copy, ignore=shutil.ignore_patterns("runtimes", "cache"))
    relocate(Home.resolve(copy))
    return copy


def _recorded_uri(home: Path, ref: str) -> str:
    name, version = ref.split("/")
    with sqlite3.connect(home / "lineage.db") as db:
        return db.execute("SELECT artifact_uri FROM variants WHERE name=? AND version=?", (name, int(version))).fetchone()[0]


def _record_uri(home: Path, ref: str, uri: str) -> None:
    name, version = ref.split("/")
    with sqlite3.connect(home / "lineage.db") as db:
        db.execute("UPDATE variants SET artifact_uri=? WHERE name=? AND version=?", (uri, name, int(version)))


@pytest.mark.parametrize("where", ["absolute", "file-uri", "dot-dot", "escaped-dot-dot", "remote-host",
                                   "link-in-store", "original-home"])
def test_a_recorded_location_outside_the_artifact_store_is_refused(gpt2reg, family_home, copied_home, tmp_path,
                                                                   where):
    from registry import Registry
    from registry.errors import UsageError

    outside = _fake_preset(tmp_path / "outside")
    root = copied_home / "artifacts"
    original = _recorded_uri(family_home, "base/1")
    uri = {
        "absolute": str(outside),
        "file-uri": outside.as_uri(),
        "dot-dot": f"file://{root}/../../outside",
        "escaped-dot-dot": f"file://{root}/%2e%2e/%2E%2E/outside",
        "remote-host": f"file://store.example{outside}",
        "link-in-store": None,
        "original-home": original,  # a row of the copy pointing back into the store it was copied from
    }[where]
    if where == "link-in-store":
        (root / "escape").symlink_to(outside)
        uri = f"file://{root}/escape"
    _record_uri(copied_home, "base/1", uri)
    before, around = store_snapshot(copied_home), _tree(tmp_path / "outside")

    with pytest.raises(UsageError, match="outside this home's artifact store"):
        Registry(copied_home).preset_path("base/1")
    result = gpt2reg("generate", "base/1", "hi", "--max-new-tokens", "1", "--home", copied_home)
    assert result.exit_code == 2 and "outside this home's artifact store" in result.stderr, result
    assert store_snapshot(copied_home) == before and _tree(tmp_path / "outside") == around


def test_the_home_s_own_locations_still_resolve(family_home):
    from registry import Registry

    path = Registry(family_home).preset_path("base/1")
    assert path.resolve().is_relative_to((family_home / "artifacts").resolve())


@pytest.mark.parametrize("content_hash", ["../../../evil", "/tmp/evil", "a" * 63, "A" * 64, ""])
def test_a_remote_store_cannot_steer_the_download_cache_out_of_the_home(tmp_path, content_hash):
    from registry import Registry
    from registry.errors import UsageError
    from registry.sdk import Variant

    reg = Registry(tmp_path / "home", tracking_uri="http://127.0.0.1:9")  # never contacted: refused first
    variant = Variant(name="x", version=1, kind="full", operation="create", parents=(), parameters=0,
                      size_bytes=0, content_hash=content_hash, run_id="r", artifact_uri="mlflow-artifacts:/1/r/artifacts",
                      metrics={}, config={}, tags={}, created_at=None)
    with pytest.raises(UsageError, match="is not a sha256 digest"):
        reg.preset_path(variant)
    assert not (tmp_path / "home").exists() and not Path("/tmp/evil").exists()
