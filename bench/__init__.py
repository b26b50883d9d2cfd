"""The benchmarks of mlserver-mme, one runner over scenarios (``bench/scenarios/<name>.py``).

    python -m bench --list
    python -m bench NAME [--quick] [scenario options]

Each scenario prints its Markdown to stdout (progress to stderr) and the runner writes its figures to
``bench/results/NAME.json`` (``--results-dir``). Shared parts are in ``bench/harness``.
"""

import ast
import os

SCENARIOS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scenarios")


def scenarios() -> dict:
    """Each scenario's name and the first line of its docstring, read without importing it."""
    found = {}
    for file in sorted(os.listdir(SCENARIOS_DIR)):
        if file.endswith(".py") and not file.startswith("_"):
            with open(os.path.join(SCENARIOS_DIR, file)) as source:
                doc = ast.get_docstring(ast.parse(source.read())) or ""
            found[file[:-3]] = doc.split("\n")[0]
    return found
