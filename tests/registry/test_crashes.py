"""Crashes and faults: a registration killed anywhere leaves a whole variant or none.

Each trial forks a worker that registers one variant and is killed with
SIGKILL: at a named step of the recording (after the run is created, halfway
through copying a file into the artifact store, inside the lineage
transaction, ...), or at a random Python function call among the hundreds of
thousands one registration makes (inside MLflow, SQLAlchemy, SQLite's
callers, file copies). After each kill `gpt2reg doctor` must name what is
half-made, `doctor --repair` must remove it, and the store must hold every
variant whole (rows, READY version, finished run, files matching their hash)
and nothing else.
"""

from __future__ import annotations

import errno
import random
import shutil
import signal
import time

import pytest

from tests.conftest import store_snapshot
from tests.registry import store_only_plugin
from tests.registry.store_only_plugin import incomplete_variants

RANDOM_TRIALS = 40



def _run(context, target, *args) -> int:
    worker = context.Process(target=target, args=args)
    worker.start()
    worker.join()
    return worker.exitcode


def _variants(home):
    from registry import Registry

    reg = Registry(home)
    found = {v.ref: v.content_hash for v in reg.list()}
    reg.close()
    return found


def test_a_registration_killed_anywhere_leaves_a_whole_variant_or_none(forkserver, tmp_path, gpt2reg):
    home = tmp_path / "home"
    store_only_plugin.seed_home(home)
    queue = forkserver.Queue()
    # One whole registration, counted: the range in which the random kills fall.
    assert _run(forkserver, store_only_plugin.calls_in_one_registration, str(home), "counted", queue) == 0
    calls = queue.get()
    assert calls > 10_000, calls

    rng = random.Random(8)
    trials = [("point", name) for name in store_only_plugin.kill_points()]
    trials += [("call", rng.randrange(1, calls)) for _ in range(RANDOM_TRIALS)]
    assert len(trials) >= 50
    kept = _variants(home)
    outcomes = {"killed": 0, "completed": 0, "repaired": 0}
    spent = {"worker": 0.0, "doctor": 0.0, "check": 0.0}
    for number, (how, where) in enumerate(trials):
        t0 = time.perf_counter()
        if how == "point":
            code = _run(forkserver, store_only_plugin.register_and_maybe_die, str(home), where, f"t{number}")
        else:
            code = _run(forkserver, store_only_plugin.register_and_die_at_call, str(home), where, f"t{number}")
        outcomes["killed" if code == -signal.SIGKILL else "completed"] += 1
        assert code in (0, -signal.SIGKILL), f"trial {number} ({how} {where}) exited {code}"

        t1 = time.perf_counter()
        spent["worker"] += t1 - t0
        found = gpt2reg("doctor", "--json", "--home", home)
        problems = found.json()["problems"]
        assert found.exit_code == (1 if problems else 0), found
        repaired = gpt2reg("doctor", "--repair", "--json", "--home", home)
        assert all(p["repaired"] for p in repaired.json()["problems"]), repaired
        outcomes["repaired"] += bool(problems)
        assert gpt2reg("doctor", "--json", "--home", home).json()["problems"] == []
        t2 = time.perf_counter()
        spent["doctor"] += t2 - t1
        assert incomplete_variants(home) == [], f"trial {number} ({how} {where})"
        spent["check"] += time.perf_counter() - t2

        now = _variants(home)
        # Nothing that was whole before the kill is lost, and at most the one new variant appears.
        assert {ref: now.get(ref) for ref in kept} == kept, f"trial {number} ({how} {where}) lost a variant"
        assert len(set(now) - set(kept)) <= 1
        if how == "point" and where == "after-lineage-commit":
            assert len(now) == len(kept) + 1, "a variant whose lineage row committed is whole and stays"
        kept = now
    print(f"\ncrash trials: {len(trials)} ({len(store_only_plugin.kill_points())} named points, {RANDOM_TRIALS} "
          f"random calls of {calls:,}); killed {outcomes['killed']}, completed {outcomes['completed']}, "
          f"repaired {outcomes['repaired']}; variants kept {len(kept)}; lost 0; seconds in workers "
          f"{spent['worker']:.1f}, in doctor {spent['doctor']:.1f}, in checks {spent['check']:.1f}")
    assert outcomes["killed"] >= 40 and outcomes["repaired"] >= 20


def _disk_fills_up(monkeypatch, where: str) -> None:
    """Writes of weights under `where` stop at 1,000 bytes with ENOSPC, as on a full disk."""
    copy = shutil.copyfile

    def copy_until_the_disk_is_full(source, destination, *args, **kwargs):
        if str(destination).startswith(where) and str(destination).endswith((".h5", ".safetensors")):
            with open(source, "rb") as reading, open(destination, "wb") as writing:
                writing.write(reading.read(1000))
            raise OSError(errno.ENOSPC, "No space left on device", str(destination))
        return copy(source, destination, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", copy_until_the_disk_is_full)


def test_a_full_disk_while_saving_leaves_no_variant_and_one_clear_error(tmp_path, gpt2reg, fixture_dir, monkeypatch):
    home = tmp_path / "home"
    store_only_plugin.seed_home(home)
    before = store_snapshot(home)
    _disk_fills_up(monkeypatch, str(home / "artifacts"))
    result = gpt2reg("import", "fx", fixture_dir, "--home", home)
    monkeypatch.undo()
    assert result.exit_code == 1, result
    assert result.stderr.count("\n") == 1 and "no space left on the disk" in result.stderr
    assert "free some space" in result.stderr and "nothing was registered" in result.stderr
    after = store_snapshot(home)
    assert after["variants"] == before["variants"] and after["versions"] == before["versions"]
    assert incomplete_variants(home) == []


def test_a_full_disk_inside_a_capability_registers_nothing(tmp_path, monkeypatch):
    from pathlib import Path

    from registry import Registry
    from registry.errors import RegistryError

    home = tmp_path / "home"
    store_only_plugin.seed_home(home)
    store_only_plugin.install()
    before = store_snapshot(home)

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(RegistryError, match="no space left on the disk") as raised:
        Registry(home).run("stamp", "base/1", name="full", tag="x")
    monkeypatch.undo()
    assert "\n" not in str(raised.value)
    after = store_snapshot(home)
    assert after["variants"] == before["variants"] and after["versions"] == before["versions"]
    assert incomplete_variants(home) == []
