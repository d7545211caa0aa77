"""Where one store-only registration spends its time in a given home: cProfile, by own time.

`bench/store_scale.py` times a registration in a small and a big home; this script says
what the time goes to, so that the two homes can be compared call by call (the same
number of `open` and `mkdir` calls, for example, taking longer in one home). The home
is put back as it was, as `store_scale.py` does.

    python bench/registration_profile.py HOME [PARENT] [--registrations 5] [--sync] [--sort cumulative]

`HOME`: a home seeded by `bench/store_scale.py --home DIR` (`DIR/variants-10000`, ...).
`--sync`: flush the disk's pending writes (the databases' backup) before the profiled ones.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("home", type=Path)
    parser.add_argument("parent", nargs="?", default="base/1")
    parser.add_argument("--registrations", type=int, default=5)
    parser.add_argument("--sync", action="store_true")
    parser.add_argument("--lines", type=int, default=25)
    parser.add_argument("--sort", default="tottime", help="pstats order: tottime (own time) or cumulative")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))

    from registry import Registry
    from tests.registry import store_only_plugin

    home = args.home
    store_only_plugin.install()
    backup = Path(tempfile.mkdtemp(prefix="registration-profile-"))
    for db in ("mlflow.db", "lineage.db"):
        with sqlite3.connect(home / db) as source, sqlite3.connect(backup / db) as copy:
            source.backup(copy)
    before = set(os.listdir(home / "artifacts"))
    try:
        reg = Registry(home)
        reg.run("stamp", args.parent, name="bench-new", tag="warm-up")  # imports and the first connections
        if args.sync:
            os.sync()
        profile = cProfile.Profile()
        profile.enable()
        for number in range(args.registrations):
            reg.run("stamp", args.parent, name="bench-new", tag=f"profiled-{number}")
        profile.disable()
        reg.close()
        report = io.StringIO()
        pstats.Stats(profile, stream=report).sort_stats(args.sort).print_stats(args.lines)
        print(f"{args.registrations} registrations from {args.parent} in {home}")
        print(report.getvalue())
    finally:
        for db in ("mlflow.db", "lineage.db"):
            with sqlite3.connect(backup / db) as copy, sqlite3.connect(home / db) as target:
                copy.backup(target)
        for made in set(os.listdir(home / "artifacts")) - before:
            shutil.rmtree(home / "artifacts" / made, ignore_errors=True)
        shutil.rmtree(backup, ignore_errors=True)


if __name__ == "__main__":
    main()
