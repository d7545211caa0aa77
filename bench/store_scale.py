"""How the registry's reads and one registration grow with the size of the store.

A registry that lives for years holds thousands of variants. This script builds
(or reuses, with `--home`) homes of a given number of variants and times, on
each:

- through the `gpt2reg` command line, each run a fresh process as a user runs
  it (wall time from the start of the interpreter to its exit, the median of
  `--repeats` runs): `list`, `list --json`, `list --best perplexity` (also
  with `--max-size-mb`), `show REF`, `lineage REF` and `lineage --json REF` of
  the variant at the end of the deepest chain;
- through the SDK in one process (after one untimed call): `Registry.list()`,
  `Registry.search("perplexity", max_size_mb=...)`, `Registry.get(REF)` and
  `Registry.lineage(REF)`;
- one new registration (the store-only `stamp` capability of the tests: a
  real registration through the recorder, with a 64 KB weights file and no
  TensorFlow), from the tip of the deepest chain, from `base/1` (the parent
  of many), and in a new family (a new child of `base/1`, whose pictures have
  the same shape in every home: the store's size alone), in-process after one
  untimed registration. The first two draw the largest lineage pictures a
  registration draws (12 generations, 24 children), which a small home's
  families are too small to need. The home is put back
  as it was afterwards (both databases restored, the new runs' folders
  removed), so a cached home keeps its size.

How a home is seeded (said here because it is not 10,000 real registrations):
one real registration per template, then copies of the rows it wrote. On this
machine a store-only registration takes about 0.14 s in a warm process, so
10,000 of them would take about 25 minutes of both CPU cores; instead:

1. `base/1` and `deep/1` (a stamp of `base/1`, given a perplexity of 100 with
   `Registry.record_metrics`) are registered for real, through `Registry`, which writes MLflow's run (tags, params, metrics), its artifacts,
   the registered model and version (with tags), and the lineage row and edge.
2. Every other variant is a copy of `deep/1`'s rows with a new run id, name,
   version and parent: in `mlflow.db` the `runs`, `tags`, `params`,
   `metrics`, `latest_metrics`, `registered_models`, `model_versions` and
   `model_version_tags` rows; in `lineage.db` the `variants` row and its
   `edges` row. Each copy's run folder under `artifacts/` is a symbolic link
   to `deep/1`'s folder (the same files and content hash; `show` and `load`
   find them where a real run's are).
3. A copy's `perplexity` is a made-up number (uniform in 20..200, fixed seed)
   written into its lineage row and MLflow metrics, so that `--best` has
   something to choose from; sizes are the template's real ones.

The shape of a home of N variants: `base/1`; a chain `deep/1..D` (D = N/10,
at most 1,000), each made from the one before; the rest in models `fam-000`,
`fam-001`, ... of 100 versions each, version 1 made from `base/1` and each
later one from the version before.

    python bench/store_scale.py [--sizes 2,100,1000,10000] [--home DIR] [--repeats 3] [--json out.json]
                                [--source DIR]

`--source DIR` measures the `registry` of another checkout on the same homes, e.g. the
commit before a change: `git archive COMMIT | tar -x -C DIR`.

`--home DIR` keeps the seeded homes in DIR (one folder per size) and reuses
them on the next run. For the registration rows, seed anew (an empty DIR): each run
makes and removes run folders in the big home's `artifacts/`, and after about ten
runs file creation there was measured 4 to 6 times slower than in a fresh home. Goals: each read under 0.5 s; a registration in the big
home no slower than in the smallest one (within 25 %, for timing noise). Each
figure is the median wall time and the median CPU time (user + system) of the
process; the goals are judged on CPU time, which other work on the machine
does not inflate (see `Figure`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import resource
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SOURCE = ""  # with --source: the checkout whose `registry` is measured instead of this one's

READ_GOAL_S = 0.5
REGISTRATION_SLACK = 1.25  # "no slower than the small home", allowing for timing noise
FAMILY_SIZE = 100
MAX_DEPTH = 1000
MAX_SIZE_MB = 1.0  # every stamp is 66 KB: the filter is evaluated on every variant and keeps them all
GPT2REG = Path(sys.executable).with_name("gpt2reg")


@dataclass(frozen=True)
class Figure:
    """Median seconds of one case: wall clock, and CPU (user + system) of the process that did it.

    The goals are judged on CPU seconds: on a machine other work keeps busy, the wall clock
    measures the queue for the cores as much as the command; on an idle one the two agree
    within the time spent waiting for the disk.
    """

    wall: float
    cpu: float


# ---------------------------------------------------------------- seeding


def shape(total: int) -> tuple[int, list[tuple[str, int]]]:
    """The depth of `deep` and the (name, versions) of the other models, for `total` variants."""
    depth = max(1, min(MAX_DEPTH, total // 10))
    rest = total - 1 - depth
    families = []
    index = 0
    while rest > 0:
        families.append((f"fam-{index:03d}", min(FAMILY_SIZE, rest)))
        rest -= FAMILY_SIZE
        index += 1
    return depth, families


def seed(home: Path, total: int) -> None:
    """A home of `total` variants (see the module's docstring for how they are made)."""
    from tests.registry import store_only_plugin

    from registry import Registry

    if total < 2:
        raise SystemExit("a home holds at least base/1 and deep/1: use sizes of 2 or more")
    depth, families = shape(total)
    store_only_plugin.seed_home(home)
    store_only_plugin.install()
    reg = Registry(home)
    reg.run("stamp", "base/1", name="deep", tag="template")
    reg.record_metrics("deep/1", {"perplexity": 100.0})  # as `gpt2reg evaluate` records it
    reg.close()

    plan = [(f"deep/{v}", f"deep/{v - 1}") for v in range(2, depth + 1)]
    for name, versions in families:
        plan += [(f"{name}/{v}", "base/1" if v == 1 else f"{name}/{v - 1}") for v in range(1, versions + 1)]
    copy_variants(home, "deep/1", plan)


def copy_variants(home: Path, template_ref: str, plan: list[tuple[str, str]]) -> None:
    """Copy the template's rows (MLflow and lineage) once per (ref, parent ref) in `plan`, in order."""
    rng = random.Random(0)
    template_name, template_version = template_ref.rsplit("/", 1)
    lineage = sqlite3.connect(home / "lineage.db")
    mlflow = sqlite3.connect(home / "mlflow.db")
    for db in (lineage, mlflow):
        db.execute("PRAGMA journal_mode=WAL")
    variant_columns = [row[1] for row in lineage.execute("PRAGMA table_info(variants)")]
    template = dict(zip(variant_columns, lineage.execute(
        "SELECT * FROM variants WHERE name=? AND version=?", (template_name, int(template_version))).fetchone()))
    edge_columns = [row[1] for row in lineage.execute("PRAGMA table_info(edges)")]
    template_edge = dict(zip(edge_columns, lineage.execute(
        "SELECT * FROM edges WHERE child_id=?", (template["id"],)).fetchone()))
    run_id = template["run_id"]
    run_folder = home / "artifacts" / run_id

    def rows(table: str, where: str, *args) -> tuple[list[str], list[tuple]]:
        columns = [row[1] for row in mlflow.execute(f"PRAGMA table_info({table})")]
        return columns, mlflow.execute(f"SELECT * FROM {table} WHERE {where}", args).fetchall()

    run_rows = {table: rows(table, "run_uuid=?", run_id)
                for table in ("runs", "tags", "params", "metrics", "latest_metrics")}
    model_rows = rows("registered_models", "name=?", template_name)
    version_rows = rows("model_versions", "name=? AND version=?", template_name, int(template_version))
    version_tag_rows = rows("model_version_tags", "name=? AND version=?", template_name, int(template_version))

    ids = {f"{name}/{version}": row_id for row_id, name, version in lineage.execute("SELECT id, name, version FROM variants")}
    metrics_of = {ref: json.loads(m) for ref, m in lineage.execute("SELECT name || '/' || version, metrics FROM variants")}
    next_id = lineage.execute("SELECT max(id) FROM variants").fetchone()[0] + 1
    next_edge = lineage.execute("SELECT max(id) FROM edges").fetchone()[0] + 1
    created = datetime.now(timezone.utc)
    new_models = sorted({ref.rsplit("/", 1)[0] for ref, _ in plan} - {ref.rsplit("/", 1)[0] for ref in ids})

    inserts: dict[str, list[tuple]] = {table: [] for table in list(run_rows) + ["model_versions", "model_version_tags"]}
    variants, edges = [], []
    for number, (ref, parent) in enumerate(plan):
        name, version = ref.rsplit("/", 1)
        new_run = uuid.uuid4().hex
        perplexity = round(rng.uniform(20, 200), 3)
        uri = template["artifact_uri"].replace(run_id, new_run)
        substitutes = {run_id: new_run, f"{template_name} (": f"{name} ("}

        def swap(value):
            if isinstance(value, str):
                for old, new in substitutes.items():
                    value = value.replace(old, new)
            return value

        for table, (columns, table_rows) in run_rows.items():
            for row in table_rows:
                record = dict(zip(columns, (swap(value) for value in row)))
                if table in ("metrics", "latest_metrics") and record["key"] == "perplexity":
                    continue  # each copy gets its own, below
                if table == "tags" and record["key"] == "gpt2reg.parent":
                    record["value"] = parent
                inserts[table].append(tuple(record.values()))
            if table in ("metrics", "latest_metrics"):
                record = dict(zip(columns, table_rows[0]))
                record.update(key="perplexity", value=perplexity, run_uuid=new_run)
                inserts[table].append(tuple(record.values()))
        for row in version_rows[1]:
            record = dict(zip(version_rows[0], (swap(value) for value in row)))
            record.update(name=name, version=int(version))
            inserts["model_versions"].append(tuple(record.values()))
        for row in version_tag_rows[1]:
            record = dict(zip(version_tag_rows[0], (swap(value) for value in row)))
            record.update(name=name, version=int(version))
            if record["key"] == "gpt2reg.parent":
                record["value"] = parent
            inserts["model_version_tags"].append(tuple(record.values()))

        metrics = {**json.loads(template["metrics"]), "perplexity": perplexity}
        variant = dict(template, id=next_id, name=name, version=int(version), run_id=new_run, artifact_uri=uri,
                       metrics=json.dumps(metrics),
                       created_at=(created + timedelta(microseconds=number)).strftime("%Y-%m-%d %H:%M:%S.%f"))
        variants.append(tuple(variant.values()))
        deltas = dict(json.loads(template_edge["metric_deltas"]))
        if "perplexity" in metrics_of.get(parent, {}):
            deltas["perplexity"] = perplexity - metrics_of[parent]["perplexity"]
        edges.append(tuple(dict(template_edge, id=next_edge, parent_id=ids[parent], child_id=next_id,
                                metric_deltas=json.dumps(deltas)).values()))
        ids[ref], metrics_of[ref] = next_id, metrics
        next_id += 1
        next_edge += 1
        (home / "artifacts" / new_run).symlink_to(run_folder.name)

    with mlflow:
        columns, (model_row, *_) = model_rows
        for name in new_models:
            record = dict(zip(columns, model_row), name=name)
            mlflow.execute(f"INSERT INTO registered_models VALUES ({','.join('?' * len(record))})", tuple(record.values()))
        for table, records in inserts.items():
            if records:
                mlflow.executemany(f"INSERT INTO {table} VALUES ({','.join('?' * len(records[0]))})", records)
    with lineage:
        lineage.executemany(f"INSERT INTO variants VALUES ({','.join('?' * len(variant_columns))})", variants)
        lineage.executemany(f"INSERT INTO edges VALUES ({','.join('?' * len(edge_columns))})", edges)
    lineage.close()
    mlflow.close()


def home_of(root: Path, total: int) -> Path:
    home = root / f"variants-{total}"
    done = home / ".seeded"
    if not done.is_file():
        if home.exists():
            shutil.rmtree(home)
        started = time.perf_counter()
        seed(home, total)
        done.write_text(f"{time.perf_counter() - started:.1f} s\n")
        print(f"seeded {home} with {total:,} variants in {done.read_text().strip()}", file=sys.stderr)
    return home


# ---------------------------------------------------------------- measuring


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cli_seconds(home: Path, args: list[str], repeats: int) -> Figure:
    """`gpt2reg ARGS` in a fresh process, interpreter start included: median wall and CPU seconds."""
    environment = {**os.environ, "GPT2REG_HOME": str(home), "COLUMNS": "120",
                   "PYTHONPATH": os.pathsep.join(filter(None, [SOURCE, os.environ.get("PYTHONPATH")]))}
    walls, cpus = [], []
    for _ in range(repeats):
        started, cpu = time.perf_counter(), _children_cpu()
        done = subprocess.run([str(GPT2REG), *args], capture_output=True, text=True, env=environment)
        walls.append(time.perf_counter() - started)
        cpus.append(_children_cpu() - cpu)
        if done.returncode != 0:  # reported in the table (an older checkout may fail where this one works)
            print(f"gpt2reg {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-300:]}", file=sys.stderr)
            return Figure(math.nan, math.nan)
    return Figure(statistics.median(walls), statistics.median(cpus))


def sdk_seconds(call, repeats: int, warm_up: bool = True) -> Figure:
    """Median wall and CPU seconds of `call()` in this process, after one untimed call."""
    if warm_up:
        call()  # imports and the first connection
    walls, cpus = [], []
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        call()
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)
    return Figure(statistics.median(walls), statistics.median(cpus))


def tip(home: Path) -> str:
    with sqlite3.connect(home / "lineage.db") as db:
        return f"deep/{db.execute('SELECT max(version) FROM variants WHERE name=?', ('deep',)).fetchone()[0]}"


def registration_seconds(home: Path, parent: str, repeats: int, *, new_family: bool = False) -> Figure:
    """The median time of one store-only registration from `parent`; the home is put back afterwards.

    `new_family`: from a new child of `parent` instead (made untimed first), whose family (one
    ancestor, then the children timed here) has the same shape in every home: what a registration
    costs for the store's size alone, apart from the lineage pictures of a deep or busy family.
    """
    from tests.registry import store_only_plugin

    from registry import Registry

    store_only_plugin.install()
    backup = Path(tempfile.mkdtemp(prefix="store-scale-"))
    try:
        for db in ("mlflow.db", "lineage.db"):
            with sqlite3.connect(home / db) as source, sqlite3.connect(backup / db) as copy:
                source.backup(copy)
        runs_before = set(os.listdir(home / "artifacts"))
        reg = Registry(home)
        if new_family:
            parent = reg.run("stamp", parent, name="bench-family", tag="bench-family").ref
        tags = iter(range(repeats + 1))
        register = lambda: reg.run("stamp", parent, name="bench-new", tag=f"bench-{next(tags)}")  # noqa: E731
        figure = sdk_seconds(register, repeats)  # the untimed first one imports and opens both stores
        reg.close()
        return figure
    finally:
        for db in ("mlflow.db", "lineage.db"):
            with sqlite3.connect(backup / db) as copy, sqlite3.connect(home / db) as target:
                copy.backup(target)
        for run in set(os.listdir(home / "artifacts")) - runs_before:
            shutil.rmtree(home / "artifacts" / run, ignore_errors=True)
        # The parents' pictures were redrawn with the new children; a stale picture misleads nobody
        # here, but the bench leaves the home's files as they were where it can.
        shutil.rmtree(backup, ignore_errors=True)


def measure(home: Path, repeats: int) -> dict[str, Figure]:
    from registry import Registry

    deepest = tip(home)
    figures = {
        "gpt2reg list": cli_seconds(home, ["list"], repeats),
        "gpt2reg list --json": cli_seconds(home, ["list", "--json"], repeats),
        "gpt2reg list --best perplexity": cli_seconds(home, ["list", "--best", "perplexity"], repeats),
        "gpt2reg list --best perplexity --max-size-mb": cli_seconds(
            home, ["list", "--best", "perplexity", "--max-size-mb", str(MAX_SIZE_MB)], repeats),
        "gpt2reg show REF": cli_seconds(home, ["show", deepest], repeats),
        "gpt2reg lineage DEEPEST": cli_seconds(home, ["lineage", deepest], repeats),
        "gpt2reg lineage --json DEEPEST": cli_seconds(home, ["lineage", "--json", deepest], repeats),
    }
    reg = Registry(home)
    figures["Registry.list()"] = sdk_seconds(reg.list, repeats)
    figures["Registry.search(perplexity, max_size_mb)"] = sdk_seconds(
        lambda: reg.search("perplexity", max_size_mb=MAX_SIZE_MB), repeats)
    figures["Registry.get(REF)"] = sdk_seconds(lambda: reg.get(deepest), repeats)
    figures["Registry.lineage(DEEPEST)"] = sdk_seconds(lambda: reg.lineage(deepest), repeats)
    reg.close()
    figures["register (from the deepest)"] = registration_seconds(home, deepest, repeats)
    figures["register (from base/1)"] = registration_seconds(home, "base/1", repeats)
    figures["register (in a new family)"] = registration_seconds(home, "base/1", repeats, new_family=True)
    return figures


def table(results: dict[int, dict[str, Figure]]) -> str:
    sizes = sorted(results)
    smallest, largest = sizes[0], sizes[-1]
    header = ["case (CPU s; wall s)", *(f"{size:,} variants" for size in sizes), "goal", "met"]
    lines = []
    for case in results[smallest]:
        cells = [case, *("fails" if math.isnan(results[size][case].cpu)
                         else f"{results[size][case].cpu:.3f}; {results[size][case].wall:.3f}" for size in sizes)]
        if case.startswith("register"):
            limit = results[smallest][case].cpu * REGISTRATION_SLACK
            cells += [f"CPU <= {smallest:,}-variant home", "yes" if results[largest][case].cpu <= limit else "NO"]
        else:
            cells += [f"CPU < {READ_GOAL_S} s", "yes" if results[largest][case].cpu < READ_GOAL_S else "NO"]
        lines.append(cells)
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    render = lambda row: "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join([render(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(render, lines)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2,100,1000,10000", help="store sizes (variants), comma-separated")
    parser.add_argument("--home", default=None, help="keep the seeded homes here and reuse them on later runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--source", default=None,
                        help="measure the registry of another checkout (e.g. `git archive` of an older commit)")
    args = parser.parse_args()
    if args.source:
        global SOURCE
        SOURCE = str(Path(args.source).resolve())
        sys.path.insert(0, SOURCE)
    sizes = sorted(int(size) for size in args.sizes.split(","))
    root = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="store-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    results = {}
    for size in sizes:
        results[size] = measure(home_of(root, size), args.repeats)
        print(f"measured the {size:,}-variant home", file=sys.stderr)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {str(size): {case: asdict(figure) for case, figure in cases.items()} for size, cases in results.items()},
            indent=2))
    if not args.home:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
