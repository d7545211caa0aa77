"""Real work killed: `finetune`, `lora`, `merge`, `quantize` and `export` killed anywhere leave a whole store.

A sample of `bench/crash_trials.py` (which runs 50 trials and more): each of
the five commands runs as the user runs it, `gpt2reg` in its own process on a
tiny imported model, and is killed with SIGKILL twice: once at a point of its
work found by polling the home (its staging folder, a checkpoint, the MLflow
run, the model version or the lineage row appearing), once at a moment drawn
uniformly over an uninterrupted run's duration. After each kill `gpt2reg list`
shows only whole variants, the earlier ones unchanged, `gpt2reg doctor`
(with `--repair` where it finds something) leaves the store clean, and the
killed command run again succeeds (with `--resume` when it left a checkpoint).
Every variant then answers `gpt2reg generate`.
"""

from __future__ import annotations

import importlib.util
import sys

from tests.conftest import REPO

# One kill at a point of each command's work, and one at a drawn moment of each training command
# (each TensorFlow process costs seconds; bench/crash_trials.py spreads 50 and more over all five).
TRIALS = 7
SEED = 3


def _bench():
    spec = importlib.util.spec_from_file_location("crash_trials", REPO / "bench" / "crash_trials.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_real_work_killed_anywhere_leaves_whole_variants_and_reruns(tmp_path, fixture_dir):
    bench = _bench()
    trials = bench.CrashTrials(tmp_path, fixture=fixture_dir, light=True, log=lambda line: None)
    trials.setup()
    plan = trials.plan(TRIALS, SEED)
    assert sorted(t.operation for t in plan) == sorted([*bench.OPERATIONS, "finetune", "lora"])
    assert {t.operation for t in plan if t.point} == set(bench.OPERATIONS)  # one at a point of each command
    assert {t.operation for t in plan if t.point is None} == {"finetune", "lora"}

    outcomes = []
    for number, trial in enumerate(plan, 1):
        outcome = trials.run(trial)
        outcomes.append(outcome)
        where = trial.point or f"{trial.at_s:.2f} s"
        assert outcome.violations == [], f"{trial.operation} killed at {where} ({outcome.phase})"
        if number == len(plan) // 2:
            assert trials.loadable() == []
    assert trials.loadable() == []
    print(f"\n{bench.summary(outcomes, trials)}")
    # The sample did kill work, and not only before it began: the points saw to that.
    killed = [o for o in outcomes if o.phase != bench.PHASES[-1]]
    assert len(killed) >= TRIALS // 2, [o.phase for o in outcomes]
    assert any(o.phase not in ("starting up", bench.PHASES[-1]) for o in outcomes)
    # The store grew by one whole variant a trial (the reruns), plus the killed ones that had committed.
    assert len(trials.kept) >= 2 + TRIALS  # fx and merge's adapter, made before the trials
