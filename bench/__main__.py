"""``python -m bench NAME [--quick] [options]``: run one scenario, print its Markdown, write its JSON."""

import argparse
import datetime
import importlib
import os
import sys
import time

from bench import scenarios
from bench.harness import RESULTS
from bench.harness.report import write_json


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    known = scenarios()
    if not argv or argv[0] in ("-h", "--help", "--list"):
        if not argv or argv[0] != "--list":
            print(__doc__.strip() + "\n\n`python -m bench NAME --help` lists a scenario's options.\n")
        width = max(map(len, known))
        for name, summary in known.items():
            print(f"{name:<{width}}  {summary}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in known:
        print(f"no scenario {name!r}; python -m bench --list names them", file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.scenarios.{name}")
    parser = argparse.ArgumentParser(prog=f"python -m bench {name}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    parser.add_argument("--results-dir", default=RESULTS, help="where NAME.json goes (default: bench/results)")
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    started = time.monotonic()
    figures = module.run(args)
    path = os.path.join(args.results_dir, f"{name}.json")
    write_json(path, {
        "scenario": name, "date": datetime.datetime.now().isoformat(timespec="seconds"), "quick": args.quick,
        "seconds": round(time.monotonic() - started, 1),
        "args": {key: value for key, value in vars(args).items() if key != "results_dir"},
        "figures": figures,
    })
    print(f"figures: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
