"""The README's and docs/'s code blocks, run as written against a real server; the docs site, built strictly.

Every fenced block of README.md and docs/*.md is one of:

- ```` ```text ````: a diagram or an output, not a command;
- marked not runnable by an HTML comment right before its fence, ``<!-- not-tested: <reason> -->``;
- the quick start's server command (a ``bash`` block ending in ``&& SERVER_COMMAND``): the module's server is
  started with that command, from the repository's root, as the README says (the install before it is the
  environment running this test);
- a ``python`` or ``bash`` block, run in a fresh folder against that server, in an environment without AWS
  settings and with an empty home folder, so a block that needs a region, a key or a file must set or make it
  itself. The only change made to a block is ``localhost:8080`` turned into the server's port.

Each run block must say what it prints with ``# => <text>`` lines (``...`` stands for anything); they are
checked in order against its output. Any other block fails the test.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SERVER_COMMAND = "MLSERVER_HOST=127.0.0.1 .venv/bin/mlserver start model-settings/"
DOCUMENTED_ADDRESS = "localhost:8080"
RUN = {"python", "bash"}
NOT_CODE = {"text"}
FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)")
COMMENT = re.compile(r"^\s*<!--(.*?)-->\s*$")
NOT_TESTED = re.compile(r"^\s*not-tested:\s*(.*?)\s*$")
EXPECTED = re.compile(r"#\s*=>\s?(.*?)\s*$")
# The one row every example sends, and the bundled models the examples call.
ROW = [1995, 3000, 3, 2, 1.0, 2]


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    comments: list = field(default_factory=list)  # the HTML comments right before the fence

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def not_tested(self):
        for comment in self.comments:
            match = NOT_TESTED.match(comment)
            if match:
                return match.group(1)
        return None

    @property
    def is_server(self) -> bool:
        return self.lang == "bash" and self.code.strip().split("&&")[-1].strip() == SERVER_COMMAND

    @property
    def expected(self) -> list:
        return [match.group(1) for line in self.code.splitlines() if (match := EXPECTED.search(line))]


def parse(path: Path) -> list:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        comments, back = [], index - 1
        while back >= 0 and COMMENT.match(lines[back]):
            comments.insert(0, COMMENT.match(lines[back]).group(1))
            back -= 1
        end = index + 1
        while end < len(lines) and not re.match(r"^\s*```\s*$", lines[end]):
            end += 1
        assert end < len(lines), f"{path.relative_to(ROOT)}:{index + 1}: a code block is never closed"
        blocks.append(Block(path, index + 1, opening.group(2), "\n".join(lines[index + 1 : end]) + "\n", comments))
        index = end + 1
    return blocks


BLOCKS = [block for path in DOCUMENTS for block in parse(path)]
RUN_BLOCKS = [b for b in BLOCKS if b.lang in RUN and b.not_tested is None and not b.is_server]


def test_every_block_runs_or_says_why_not():
    assert (ROOT / "README.md") in DOCUMENTS and len(DOCUMENTS) > 1
    unmarked = [
        f"{b.where} ({b.lang or 'no language'})"
        for b in BLOCKS
        if b.lang not in NOT_CODE and b.not_tested is None and not b.is_server and b.lang not in RUN
    ]
    assert not unmarked, (
        "code blocks neither run by this test nor marked '<!-- not-tested: reason -->' right before their fence "
        "(diagrams and outputs: ```text): " + ", ".join(unmarked)
    )
    empty_reasons = [b.where for b in BLOCKS if any(NOT_TESTED.match(c) for c in b.comments) and not b.not_tested]
    assert not empty_reasons, f"not-tested without a reason: {empty_reasons}"
    silent = [b.where for b in RUN_BLOCKS if not b.expected]
    assert not silent, f"run blocks that do not say what they print ('# => ...'): {silent}"
    assert any(b.is_server for b in parse(ROOT / "README.md")), f"the README no longer starts the server with {SERVER_COMMAND!r}"


def test_readme_shows_every_way_to_call():
    readme = [b for b in RUN_BLOCKS if b.path.name == "README.md"]
    code = "\n".join(b.code for b in readme)
    for needle in ('"sagemaker-runtime"', ".invoke_endpoint(", "aws sagemaker-runtime invoke-endpoint", "/invocations", "/v2/models/"):
        assert needle in code, f"no run README block holds {needle!r}"


def test_shown_predictions_are_xgboost_1_7_6s():
    """The values the pages show are those XGBoost 1.7.6 made for the bundled models (tests' fixture)."""
    fixture = next(ROOT.glob("tests/**/expected_1_7_6.json"))
    expected = json.loads(fixture.read_text())
    row = expected["rows"].index(ROW)
    shown = "\n".join(text for b in RUN_BLOCKS for text in b.expected)
    for target in ("Houston_TX.tar.gz", "northeast/Boston_MA.tar.gz"):
        value = expected["predictions"][target][row]
        assert f"[{value!r}]" in shown or f"[{value:g}]" in shown, (target, value)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _clean_env(**extra) -> dict:
    """The caller's environment without AWS or server settings, the running interpreter's tools first."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "MLSERVER_", "BOTO_")) and key not in ("PYTHONPATH",)
    }
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory):
    """The README's quick-start server: its command, from the repository's root, on free loopback ports."""
    work = tmp_path_factory.mktemp("docs-server")
    command = next(b for b in parse(ROOT / "README.md") if b.is_server).code.strip().split("&&")[-1].strip()
    bindir = os.path.dirname(sys.executable)
    if Path(bindir) != ROOT / ".venv" / "bin":  # the package is installed in another environment: use its tools
        command = command.replace(".venv/bin/", bindir + "/")
    port = _free_port()
    env = _clean_env(
        HOME=str(work),
        MLSERVER_HTTP_PORT=str(port),
        MLSERVER_GRPC_PORT=str(_free_port()),
        MLSERVER_METRICS_PORT=str(_free_port()),
        MLSERVER_MME_CACHE_DIR=str(work / "cache"),
    )
    log = open(work / "mlserver.log", "wb")
    process = subprocess.Popen(
        ["bash", "-c", command], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )

    def output() -> str:
        return (work / "mlserver.log").read_text(errors="replace")[-5000:]

    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"{command!r} exited with {process.returncode}:\n{output()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{command!r} did not answer /ping within 120 s:\n{output()}")
            time.sleep(0.2)
        yield port
    finally:
        # the server and what it forked are one process group of their own
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        except ProcessLookupError:
            pass
        log.close()


def _check_output(block: Block, out: str) -> None:
    """Each ``# =>`` text appears in the output, in order; ``...`` in it stands for anything."""
    position = 0
    for text in block.expected:
        for piece in (piece.strip() for piece in text.split("...")):
            if piece:
                found = out.find(piece, position)
                assert found >= 0, f"{block.where}: expected {text!r} (from {piece!r} on), printed:\n{out}"
                position = found + len(piece)


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=lambda b: b.where)
def test_block(block, docs_server, tmp_path):
    code = block.code.replace(DOCUMENTED_ADDRESS, f"localhost:{docs_server}")
    env = _clean_env(HOME=str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    work = tmp_path / "work"
    work.mkdir()
    if block.lang == "python":
        argv = [sys.executable, "-"]
    else:
        assert shutil.which("bash")
        argv = ["bash", "-euo", "pipefail", "-s"]
    done = subprocess.run(argv, input=code, cwd=work, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{block.where} failed ({done.returncode}):\n{code}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    _check_output(block, done.stdout)


def test_docs_build_strictly(tmp_path):
    """mkdocs build --strict: a page missing from nav, a broken link or a missing image fails."""
    mkdocs = shutil.which("mkdocs", path=os.path.dirname(sys.executable)) or shutil.which("mkdocs")
    assert mkdocs, "mkdocs is not installed (pip install '.[test]')"
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [p.name for p in DOCUMENTS[1:] if p.name not in nav]
    assert not missing, f"pages not in mkdocs.yml's nav: {missing}"
    done = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "index.html").exists()
