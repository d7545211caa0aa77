"""Kill real `gpt2reg` work with SIGKILL and check that the store keeps only whole variants.

Each trial starts one of `finetune`, `lora`, `merge`, `quantize` or `export`
as the user would (the `gpt2reg` command in its own process, on a tiny model
imported from a Hugging Face checkpoint) and kills its process group:

- at a moment drawn uniformly in [0, D], D being the measured duration of an
  uninterrupted run of the same command (start-up, work and recording; taken
  again from any run that finishes before its kill, so that D follows the
  machine's load), or
- at a point of the work, found by polling the home with a short interval:
  its staging folder appears, the MLflow run appears (the work begins), a
  training checkpoint appears, the model version appears, the lineage row
  commits.

After each kill (and after the process is gone) the trial checks what a user
would check:

1. `gpt2reg list --json` shows only whole variants: each one's files hash to
   its content hash, its MLflow version is READY, its lineage row exists;
   every variant made before the kill is still there with the same content
   hash, and at most the killed one is new.
2. `gpt2reg doctor --json` is clean, or `doctor --repair` repairs every
   problem it names and a second `doctor` is clean (the killed process's run
   is then ended as KILLED, its files removed); an independent check (rows,
   runs, artifact folders, staging) then finds nothing half-made.
3. The killed command run again succeeds: a training command with
   `--resume` when it left a checkpoint (before `--repair`, which would remove
   it: the doctor's own advice), the others plainly.

Every variant answers `gpt2reg generate REF "hi" --max-new-tokens 2` halfway
through the trials and at the end.

    python bench/crash_trials.py [--trials 50] [--seed 0] [--keep DIR] [--light]

Prints per-operation figures (trials, where the kills fell, the problems
`doctor` repaired by kind, reruns, failures) and exits 1 on any violation.
`tests/registry/test_real_crashes.py` runs a small sample through the same code.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `registry` and the tests' independent store check

FIXTURE = REPO.parent / "shared" / "fixtures" / "hf-gpt2-tiny"  # the tests' tiny Hugging Face checkpoint
OPERATIONS = ("finetune", "lora", "merge", "quantize", "export")
TRAINING = ("finetune", "lora")
# Points of the work a trial can kill at, in the order a run reaches them.
# The MLflow run begins with the work, right after the staging folder.
POINTS = {op: ("staging", "run", *(("checkpoint",) if op in TRAINING else ()), "version", "lineage")
          for op in OPERATIONS}
# Where a killed process had got to, judged from what it left (the furthest first).
PHASES = ("lineage row committed", "model version registered", "checkpoint written", "working (MLflow run started)",
          "staging folder made", "starting up", "finished before the kill")
POLL_S = 0.002  # between two looks at the home while waiting for a point
TEXT = ("The cat sat on the mat and looked at the garden. A dog ran past the gate, then slept under the "
        "old tree by the river. ")


def sample_text(path: Path) -> Path:
    path.write_text("\n".join(TEXT * 3 for _ in range(20)), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the CLI, as a user runs it


def cli(*args) -> tuple[int, str, str]:
    """`gpt2reg ARGS` in this process (read-only commands: no TensorFlow start-up per call)."""
    from registry.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def cli_json(*args) -> tuple[int, dict, str]:
    code, out, err = cli(*args, "--json")
    try:
        return code, json.loads(out), err
    except json.JSONDecodeError:
        return code, {}, f"{err}\n(stdout was not JSON: {out[-300:]!r})"


class Gpt2reg:
    """`gpt2reg ARGS` in its own process and process group (so that a kill reaches anything it starts).

    Its output goes to files, not pipes: a pipe nobody reads while the trial polls could stall it.
    """

    def __init__(self, args: list, cwd: Path):
        environment = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-c", "from registry.cli import main; main()", *map(str, args)]
        self.out, self.err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(command, cwd=cwd, env=environment, stdout=self.out, stderr=self.err,
                                        text=True, start_new_session=True)

    def poll(self) -> int | None:
        return self.process.poll()

    def output(self) -> tuple[int, str, str]:
        self.out.seek(0), self.err.seek(0)
        result = self.process.returncode, self.out.read(), self.err.read()
        self.out.close(), self.err.close()
        return result

    def wait(self, timeout: float = 900) -> tuple[int, str, str]:
        self.process.wait(timeout=timeout)
        return self.output()

    def kill_and_wait(self, timeout: float = 60.0) -> tuple[int, str, str]:
        """SIGKILL the process group, reap the leader, and poll until no member of the group is left."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return self.output()
            if time.monotonic() > deadline:
                raise RuntimeError(f"process group {self.process.pid} still has members {timeout:.0f} s after SIGKILL")
            time.sleep(0.01)


def run_gpt2reg(args: list, cwd: Path) -> tuple[int, str, str, float]:
    started = time.perf_counter()
    code, out, err = Gpt2reg(args, cwd).wait()
    return code, out, err, time.perf_counter() - started


# ---------------------------------------------------------------- looking at a home from outside


def _count(database: Path, table: str) -> int:
    """Rows of `table`, read-only (WAL: a reader never blocks the writer); -1 while unreadable."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=0.05)) as db:
            return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    except sqlite3.Error:
        return -1


@dataclass
class Marks:
    """What a home holds that a run adds to as it goes: the counts a point or a phase is judged by."""

    runs: int
    versions: int
    rows: int

    @classmethod
    def of(cls, home: Path) -> "Marks":
        return cls(_count(home / "mlflow.db", "runs"), _count(home / "mlflow.db", "model_versions"),
                   _count(home / "lineage.db", "variants"))


def checkpoint_steps(home: Path) -> list[Path]:
    folder = home / "checkpoints"
    return sorted(folder.glob("*/step-*")) if folder.is_dir() else []


def staging_entries(home: Path) -> list[Path]:
    folder = home / ".staging"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def point_reached(point: str, home: Path, before: Marks) -> bool:
    if point == "staging":
        return bool(staging_entries(home))
    if point == "checkpoint":
        return bool(checkpoint_steps(home))
    if point == "run":
        return _count(home / "mlflow.db", "runs") > before.runs
    if point == "version":
        return _count(home / "mlflow.db", "model_versions") > before.versions
    if point == "lineage":
        return _count(home / "lineage.db", "variants") > before.rows
    raise ValueError(point)


def phase_reached(home: Path, before: Marks) -> str:
    now = Marks.of(home)
    if now.rows > before.rows:
        return PHASES[0]
    if now.versions > before.versions:
        return PHASES[1]
    if checkpoint_steps(home):
        return PHASES[2]
    if now.runs > before.runs:
        return PHASES[3]
    if staging_entries(home):
        return PHASES[4]
    return PHASES[5]


# ---------------------------------------------------------------- the checks


def whole_variants(home: Path) -> tuple[dict[str, str], list[str]]:
    """`gpt2reg list --json`'s variants (ref -> content hash) and whatever about them is not whole."""
    from registry import Registry, artifacts

    code, listed, err = cli_json("list", "--home", home)
    if code != 0:
        return {}, [f"list --json exited {code}: {err.strip()[-300:]}"]
    shown = {v["ref"]: v["content_hash"] for v in listed["variants"]}
    problems = []
    reg = Registry(home)
    try:
        rows = {row.ref for row in reg.lineage_store.list()}
        versions = {f"{v.name}/{v.version}": v.status for v in reg.tracker.versions()}
        for ref, content_hash in shown.items():
            if ref not in rows:
                problems.append(f"{ref} is listed but has no lineage row")
            if versions.get(ref) != "READY":
                problems.append(f"{ref} is listed but its MLflow version is {versions.get(ref, 'missing')}")
            try:
                actual = artifacts.content_hash(reg.preset_path(ref))
            except Exception as error:  # missing or unreadable files
                actual = f"unreadable ({error})"
            if actual != content_hash:
                problems.append(f"{ref} is listed but its files do not hash to its content hash ({actual})")
    finally:
        reg.close()
    return shown, problems


def half_made(home: Path) -> list[str]:
    """The independent check the store-only crash tests use: rows, runs, artifact folders, staging."""
    from tests.registry.store_only_plugin import incomplete_variants

    return incomplete_variants(home)


# ---------------------------------------------------------------- the trials


@dataclass
class Trial:
    operation: str
    point: str | None = None  # a point of the work, or None: a moment drawn in [0, D]
    fraction: float | None = None  # that moment, as a share of D (drawn uniformly in [0, 1])
    at_s: float | None = None  # the moment in seconds, once D is known


@dataclass
class Outcome:
    trial: Trial
    killed_after_s: float = 0.0
    phase: str = ""
    problems: list[str] = field(default_factory=list)  # kinds named by doctor
    resumed: bool = False
    rerun_s: float = 0.0
    rerun_ref: str | None = None  # the variant the rerun made
    partial_exports: int = 0  # hidden partial copies a killed export left beside its --out folder
    violations: list[str] = field(default_factory=list)


class CrashTrials:
    """A home with a tiny imported model and the five commands to kill; `run(trial)` runs one trial."""

    def __init__(self, root: Path, *, fixture: Path = FIXTURE, light: bool = False, log=print):
        """`light`: the setup and the reruns run in this process (no TensorFlow start-up each); the setup
        makes only merge's adapter, each command's first trial is at a point, and D is measured on the
        rerun after it, which runs in its own process as the killed one did, where a trial needs D."""
        self.root = Path(root)
        self.fixture = Path(fixture)
        self.light = light
        self.home = self.root / "home"
        self.log = log
        self.data = sample_text(self.root / "train.txt")
        self.durations: dict[str, float] = {}
        self.adapter: str | None = None  # merge's parent
        self.kept: dict[str, str] = {}  # every whole variant so far: ref -> content hash
        self.exports = 0
        self.timed: set[str] = set()  # the commands that have trials at drawn moments (which need D)

    # -- commands

    def command(self, operation: str, *, resume: bool = False) -> list[str]:
        train = ["--data", self.data, "--steps", "4", "--batch-size", "2", "--seq-len", "32", "--checkpoint-every", "1"]
        if operation == "finetune":
            args = ["finetune", "fx/1", *train]
        elif operation == "lora":
            args = ["lora", "fx/1", *train, "--rank", "2"]
        elif operation == "merge":
            args = ["merge", self.adapter]
        elif operation == "quantize":
            args = ["quantize", "fx/1", "--mode", "int8"]
        elif operation == "export":
            self.exports += 1
            args = ["export", "fx/1", "--format", "keras", "--out", self.root / "exports" / f"out-{self.exports}"]
        else:
            raise ValueError(operation)
        return [*args, "--name", f"crash-{operation}", *(["--resume"] if resume else []), "--home", self.home,
                "--json"]

    def _made(self, code: int, out: str, err: str, what: str) -> str:
        if code != 0:
            raise RuntimeError(f"{what} exited {code}: {err.strip()[-1500:]}")
        return json.loads(out)["ref"]

    # -- setup: the model, and one uninterrupted run of each command (its duration D)

    def _gpt2reg(self, args: list, *, in_process: bool) -> tuple[int, str, str, float]:
        if not in_process:
            return run_gpt2reg(args, self.root)
        started = time.perf_counter()
        code, out, err = cli(*args)
        return code, out, err, time.perf_counter() - started

    def setup(self) -> None:
        code, out, err, seconds = self._gpt2reg(["import", "fx", self.fixture, "--home", self.home, "--json"],
                                                in_process=self.light)
        self._made(code, out, err, "import")
        self.log(f"import fx: {seconds:.1f} s")
        for operation in ("lora",) if self.light else OPERATIONS:
            code, out, err, seconds = self._gpt2reg(self.command(operation), in_process=self.light)
            ref = self._made(code, out, err, f"{operation} (uninterrupted)")
            if not self.light:
                self.durations[operation] = seconds
            if operation == "lora":
                self.adapter = ref
            self.log(f"{operation} uninterrupted: {seconds:.1f} s -> {ref}")
        self.kept, problems = whole_variants(self.home)
        if problems:
            raise RuntimeError(f"the store is not whole before any kill: {problems}")

    def plan(self, trials: int, seed: int) -> list[Trial]:
        """`trials` spread over the operations, round-robin; per operation about 40% at points, the rest at times."""
        rng = random.Random(seed)
        per_operation = {op: [] for op in OPERATIONS}
        for index in range(trials):
            per_operation[OPERATIONS[index % len(OPERATIONS)]].append(None)
        planned = {}
        for op, slots in per_operation.items():
            points = list(POINTS[op])
            rng.shuffle(points)
            at_points = max(1, round(0.4 * len(slots))) if slots else 0
            chosen = [Trial(op, point=points[i % len(points)]) for i in range(at_points)]
            timed = [Trial(op, fraction=rng.uniform(0, 1)) for _ in range(len(slots) - at_points)]
            if self.light:  # a point first: its rerun measures D
                rng.shuffle(timed)
                planned[op] = [chosen[0], *timed, *chosen[1:]]
            else:
                planned[op] = chosen + timed
                rng.shuffle(planned[op])
        self.timed = {op for op, chosen in planned.items() if any(t.point is None for t in chosen)}
        order = []
        for index in range(max(map(len, planned.values()), default=0)):
            order += [planned[op][index] for op in OPERATIONS if index < len(planned[op])]
        return order

    # -- one trial

    def run(self, trial: Trial) -> Outcome:
        outcome = Outcome(trial)
        violations = outcome.violations
        before = Marks.of(self.home)
        partial_before = len(self.partial_exports())
        args = self.command(trial.operation)
        started = time.monotonic()
        process = Gpt2reg(args, self.root)
        if trial.point is None:
            trial.at_s = trial.fraction * self.durations[trial.operation]
            deadline = started + trial.at_s
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        else:
            deadline = started + 600
            while (process.poll() is None and not point_reached(trial.point, self.home, before)
                   and time.monotonic() < deadline):
                time.sleep(POLL_S)
        finished_first = process.poll() is not None
        outcome.killed_after_s = time.monotonic() - started
        code, _, err = process.kill_and_wait()
        if finished_first:
            outcome.phase = PHASES[-1]
            if code != 0:
                violations.append(f"exited {code} by itself before the kill: {err.strip()[-800:]}")
            elif trial.point is None:
                # An uninterrupted run measured again: D follows the machine's load (D measured on a busy
                # machine would put many kills after the end of the work).
                self.durations[trial.operation] = outcome.killed_after_s
        else:
            outcome.phase = phase_reached(self.home, before)
        outcome.partial_exports = len(self.partial_exports()) - partial_before

        # 1. Only whole variants are listed; the earlier ones unchanged; at most the killed one is new.
        listed, problems = whole_variants(self.home)
        violations += problems
        for ref, content_hash in self.kept.items():
            if listed.get(ref) != content_hash:
                violations.append(f"earlier variant {ref} is {'changed' if ref in listed else 'gone'} after the kill")
        new = sorted(set(listed) - set(self.kept))
        if len(new) > 1 or any(not ref.startswith(f"crash-{trial.operation}/") for ref in new):
            violations.append(f"unexpected new variants after the kill: {new}")
        if outcome.phase == PHASES[0] and not new:
            violations.append("the lineage row committed but no variant is listed")

        # 2. The doctor names what is half-made; a checkpoint is resumed first, as it advises.
        code, found, err = cli_json("doctor", "--home", self.home)
        kinds = [p.get("kind") for p in found.get("problems", [])]
        outcome.problems = kinds
        if code != (1 if kinds else 0):
            violations.append(f"doctor --json exited {code} with {len(kinds)} problems: {err.strip()[-300:]}")
        if trial.operation in TRAINING and checkpoint_steps(self.home):
            outcome.resumed = True
            self._rerun(trial, outcome, resume=True)
        if kinds or outcome.resumed:
            code, repaired, err = cli_json("doctor", "--repair", "--home", self.home)
            left = [p for p in repaired.get("problems", []) if not p.get("repaired")]
            if left:
                violations.append(f"doctor --repair could not repair: {left}")
            code, again, err = cli_json("doctor", "--home", self.home)
            if code != 0 or again.get("problems"):
                violations.append(f"doctor after --repair exited {code}: {again.get('problems')} {err.strip()[-300:]}")
        leftovers = half_made(self.home)
        if leftovers:
            violations.append(f"half-made after doctor: {leftovers}")

        # 3. The killed command, run again, succeeds (a training one already resumed above).
        if not outcome.resumed:
            self._rerun(trial, outcome, resume=False)
        listed, problems = whole_variants(self.home)
        violations += problems
        lost = [ref for ref, content_hash in self.kept.items() if listed.get(ref) != content_hash]
        if lost:
            violations.append(f"earlier variants changed or gone after the rerun: {lost}")
        if outcome.rerun_ref is not None and outcome.rerun_ref not in listed:
            violations.append(f"the rerun printed {outcome.rerun_ref}, which `list` does not show")
        self.kept = listed
        return outcome

    def _rerun(self, trial: Trial, outcome: Outcome, *, resume: bool) -> None:
        measure = trial.operation in self.timed and trial.operation not in self.durations
        in_process = self.light and not measure
        code, out, err, seconds = self._gpt2reg(self.command(trial.operation, resume=resume), in_process=in_process)
        outcome.rerun_s = seconds
        if measure and code == 0:
            self.durations[trial.operation] = seconds
        if code != 0:
            outcome.violations.append(f"the rerun{' with --resume' if resume else ''} exited {code}: "
                                      f"{err.strip()[-800:]}")
            return
        ref = outcome.rerun_ref = json.loads(out)["ref"]
        if resume and trial.operation in TRAINING and checkpoint_steps(self.home):
            outcome.violations.append(f"{ref}: the resumed run left its checkpoints behind")

    def partial_exports(self) -> list[Path]:
        folder = self.root / "exports"
        return sorted(folder.glob(".*.partial-*")) if folder.is_dir() else []

    def loadable(self) -> list[str]:
        """Every whole variant answers `gpt2reg generate REF "hi" --max-new-tokens 2`."""
        failures = []
        for ref in sorted(self.kept):
            code, answer, err = cli_json("generate", ref, "hi", "--max-new-tokens", "2", "--home", self.home)
            outputs = answer.get("outputs") or [{}]
            if code != 0 or not outputs[0].get("token_ids"):
                failures.append(f"generate {ref} exited {code}: {err.strip()[-400:]}")
        return failures


# ---------------------------------------------------------------- the report


def summary(outcomes: list[Outcome], trials: CrashTrials) -> str:
    lines = []
    for op in OPERATIONS:
        mine = [o for o in outcomes if o.trial.operation == op]
        if not mine:
            continue
        duration = trials.durations.get(op)
        points = Counter(o.trial.point for o in mine if o.trial.point is not None)
        phases = Counter(o.phase for o in mine)
        problems = Counter(kind for o in mine for kind in o.problems)
        failures = sum(bool(o.violations) for o in mine)
        measured = f"D = {duration:.1f} s uninterrupted, the latest measured" if duration else "D not needed"
        lines.append(f"{op}: {len(mine)} trials ({measured}); failures {failures}")
        timed = [o for o in mine if o.trial.point is None]
        if timed:
            drawn = sorted(o.trial.fraction for o in timed)
            quartiles = statistics.quantiles(drawn, n=4) if len(drawn) > 1 else drawn * 3
            seconds = sorted(o.killed_after_s for o in timed)
            lines.append(f"  at random times: {len(timed)}, drawn at {drawn[0]:.2f}..{drawn[-1]:.2f} of D "
                         f"(quartiles {', '.join(f'{q:.2f}' for q in quartiles)}), "
                         f"killed after {seconds[0]:.1f}..{seconds[-1]:.1f} s")
        if points:
            lines.append("  at points: " + ", ".join(f"{p} {n}" for p, n in sorted(points.items())))
        lines.append("  phase reached: " + ", ".join(f"{p} {phases[p]}" for p in PHASES if phases[p]))
        lines.append("  doctor found: " + (", ".join(f"{k} {n}" for k, n in sorted(problems.items())) or "nothing"))
        if op == "export":
            lines.append(f"  partial copies left beside --out (outside the home; doctor does not see them): "
                         f"{sum(o.partial_exports for o in mine)}")
        reruns = [o.rerun_s for o in mine if o.rerun_s]
        lines.append(f"  reruns: {len(reruns)} succeeded of {len(mine)}, {sum(o.resumed for o in mine)} with --resume"
                     + (f", median {statistics.median(reruns):.1f} s" if reruns else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="work in this folder and leave it (default: a temporary one)")
    parser.add_argument("--fixture", type=Path, default=FIXTURE, help="the Hugging Face checkpoint to import")
    parser.add_argument("--light", action="store_true",
                        help="setup and reruns in this process, saving a TensorFlow start-up each (every "
                             "killed run is still its own process; D is measured on each command's first rerun)")
    options = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        root = options.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="crash-trials-")))
        root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        trials = CrashTrials(root, fixture=options.fixture, light=options.light,
                             log=lambda line: print(line, flush=True))
        trials.setup()
        plan = trials.plan(options.trials, options.seed)
        outcomes, failures, interrupted = [], [], False
        try:
            for number, trial in enumerate(plan, 1):
                outcome = trials.run(trial)
                outcomes.append(outcome)
                where = trial.point or f"{trial.at_s:.2f} s"
                print(f"trial {number}/{len(plan)} {trial.operation} at {where}: killed after "
                      f"{outcome.killed_after_s:.2f} s ({outcome.phase}); doctor found "
                      f"{outcome.problems or 'nothing'}; rerun {'--resume ' if outcome.resumed else ''}"
                      f"{outcome.rerun_s:.1f} s" + (f"; VIOLATIONS {outcome.violations}" if outcome.violations else ""),
                      flush=True)
                failures += [f"trial {number} ({trial.operation} at {where}): {v}" for v in outcome.violations]
                if number == len(plan) // 2:
                    halfway = trials.loadable()
                    failures += [f"halfway: {f}" for f in halfway]
                    print(f"halfway: {len(trials.kept) - len(halfway)} of {len(trials.kept)} variants generate",
                          flush=True)
        except KeyboardInterrupt:  # the figures of the trials done so far, and the checks at the end
            interrupted = True
        at_the_end = trials.loadable()
        failures += [f"at the end: {f}" for f in at_the_end]
        print(f"\n{summary(outcomes, trials)}")
        print(f"\n{len(outcomes)} trials{' (interrupted)' if interrupted else ''}, "
              f"{sum(o.phase != PHASES[-1] for o in outcomes)} killed before they finished; "
              f"{len(trials.kept)} whole variants at the end, {len(trials.kept) - len(at_the_end)} of them generate; "
              f"{time.perf_counter() - started:.0f} s in all; violations: {len(failures)}")
        for failure in failures:
            print(f"  {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
