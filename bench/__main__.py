"""``make bench``: run every benchmark and print its figures.

Each benchmark module exposes ``run(args) -> None`` and prints its own table;
none asserts a time (figures are for people, not for pass/fail).
"""

from __future__ import annotations

import argparse
import importlib

#: In the order they run; each name is a module of this package.
BENCHMARKS = ("validation", "stages", "publish", "pipeline")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("only", nargs="*", choices=[*BENCHMARKS, []], help="benchmarks to run")
    parser.add_argument("--quick", action="store_true", help="smaller loads, for a smoke run")
    args = parser.parse_args()
    for name in args.only or BENCHMARKS:
        module = importlib.import_module(f"bench.{name}")
        print(f"\n=== {name} ===", flush=True)
        module.run(args)


if __name__ == "__main__":
    main()
