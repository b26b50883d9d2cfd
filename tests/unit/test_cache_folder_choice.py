"""Which cache folder a server takes: the one set, or among the default's siblings the one that holds its models."""

import json
import os
import subprocess
import sys

import pytest

from mlserver_mme.artifacts.repository import _own_cache_dir
from mlserver_mme.config import MMESettings
from mlserver_mme.folders import LOCK_FILE, FolderInUse, private_folder

HOLD_LOCK = """
import fcntl, os, sys, time
descriptor = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(descriptor, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def record(folder, prefix: str) -> None:
    private_folder(str(folder), "test")
    (folder / "hot-set.json").write_text(json.dumps({"prefix": prefix, "models": []}))


@pytest.fixture
def default(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("MLSERVER_MME_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "mlserver-mme"


def settings(prefix: str, **values) -> MMESettings:
    return MMESettings(model_prefix=prefix, **values)


def test_a_server_takes_the_default_sibling_that_recorded_its_prefix(default):
    record(default, "s3://bucket/other/")
    record(default.with_name("mlserver-mme-2"), "s3://bucket/ours/")
    chosen = _own_cache_dir(settings("s3://bucket/ours/"))
    assert chosen.cache_dir == f"{default}-2"  # the default is free, but holds another prefix's models
    # a third prefix takes a fresh folder rather than one holding another prefix's models
    assert _own_cache_dir(settings("s3://bucket/third/")).cache_dir == f"{default}-3"


def test_a_folder_set_explicitly_that_another_process_holds_is_refused(tmp_path, default):
    held = tmp_path / "held"
    private_folder(str(held), "test")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(held / LOCK_FILE)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(FolderInUse, match=rf"MLSERVER_MME_CACHE_DIR \({held}\) is in use by another server"):
            _own_cache_dir(settings("s3://bucket/ours/", cache_dir=str(held)))
    finally:
        holder.stdin.close()
        holder.wait(10)
    assert _own_cache_dir(settings("s3://bucket/ours/", cache_dir=str(held))).cache_dir == str(held)  # free again
