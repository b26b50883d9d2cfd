"""What an artifact's own model-settings.json may say (no code from an archive runs)."""

import json

import pytest

from mlserver_mme.artifacts.declared_settings import MAX_SETTINGS_BYTES, XGBOOST_RUNTIME, read_declared
from mlserver_mme.config import MMESettings, comma_list
from mlserver_mme.errors import BrokenModel

ALLOWED = [XGBOOST_RUNTIME, "doubler.Doubler"]


def declared(tmp_path, settings) -> dict:
    path = tmp_path / "model-settings.json"
    path.write_text(settings if isinstance(settings, str) else json.dumps(settings))
    return read_declared(str(path), "t.tar.gz", ALLOWED)


def test_an_allowed_runtime_and_its_parameters_are_kept(tmp_path):
    settings = {"implementation": "doubler.Doubler", "name": "ignored",
                "parameters": {"uri": "/elsewhere", "version": "2", "extra": {"factor": 3}}}
    assert declared(tmp_path, settings) == {
        "implementation": "doubler.Doubler", "parameters": {"version": "2", "extra": {"factor": 3}},
    }


def test_no_implementation_means_the_xgboost_runtime(tmp_path):
    assert declared(tmp_path, {"parameters": {"extra": {}}})["implementation"] == XGBOOST_RUNTIME


@pytest.mark.parametrize(
    "implementation",
    ["payload.Model", "mlserver_mme.router.SageMakerRouter", "os.system", ["doubler.Doubler"]],
)
def test_a_runtime_not_allowed_is_refused(tmp_path, implementation):
    with pytest.raises(BrokenModel, match="does not allow"):
        declared(tmp_path, {"implementation": implementation})


def test_private_keys_are_dropped(tmp_path):
    settings = {"implementation": "doubler.Doubler", "_source": "/tmp/x/model-settings.json"}
    assert declared(tmp_path, settings) == {"implementation": "doubler.Doubler"}


@pytest.mark.parametrize(
    "settings, key",
    [
        ({"parameters": {"environment_tarball": "env.tar.gz"}}, "parameters.environment_tarball"),
        ({"parameters": {"environment_path": "/opt/env"}}, "parameters.environment_path"),
        ({"parameters": {"inference_pool_gid": "x"}}, "parameters.inference_pool_gid"),
        ({"parallel_workers": 4}, "parallel_workers"),
        ({"cache_enabled": True}, "cache_enabled"),
    ],
)
def test_keys_an_artifact_may_not_set_are_refused(tmp_path, settings, key):
    with pytest.raises(BrokenModel, match=f"sets {key}"):
        declared(tmp_path, settings)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"parameters": 3}'])
def test_invalid_files_are_refused(tmp_path, text):
    with pytest.raises(BrokenModel, match="is not valid"):
        declared(tmp_path, text)


def test_by_default_only_the_checked_xgboost_runtime_is_allowed():
    assert comma_list(MMESettings().allowed_runtimes) == [XGBOOST_RUNTIME]


def test_a_settings_file_over_the_size_limit_is_refused_unread(tmp_path):
    padding = "x" * MAX_SETTINGS_BYTES
    with pytest.raises(BrokenModel, match=f"larger than {MAX_SETTINGS_BYTES} bytes"):
        declared(tmp_path, {"implementation": "doubler.Doubler", "parameters": {"extra": {"pad": padding}}})


def test_a_settings_file_nested_too_deeply_is_refused(tmp_path):
    with pytest.raises(BrokenModel, match="nested too deeply"):
        declared(tmp_path, "[" * 30_000 + "]" * 30_000)
