"""Folders of the checkout the tests read from."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.join(ROOT, "tests")
FIXTURES = os.path.join(TESTS, "fixtures")
MATRIX = os.path.join(FIXTURES, "xgboost_matrix")
EXAMPLES = os.path.join(ROOT, "examples", "models")
RUNTIMES = os.path.join(TESTS, "support", "runtimes")
