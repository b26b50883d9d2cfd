"""What an artifact's own ``model-settings.json`` may say.

An archive may name the MLServer runtime that serves it. Left as MLServer reads
it, that file is code: ``implementation`` imports any class on the path (this
package's router included), a ``_source`` key puts the unpacked folder on
``sys.path`` first (so the archive's own ``.py`` files run), and
``parameters.environment_tarball`` makes MLServer unpack and activate a Python
environment. So the file is read as data and only this is kept:

- ``implementation``: one of the operator's allowed runtimes
  (``MLSERVER_MME_ALLOWED_RUNTIMES``);
- ``parameters``: ``version``, ``format``, ``content_type`` and ``extra``
  (``uri`` is set by the server);
- ``inputs``, ``outputs``, ``platform``, ``versions``: descriptive only.

``name`` is ignored (the server names models), keys starting with ``_`` are
dropped, and any other key refuses the artifact.
"""

import importlib.util
import json
from typing import List

from .errors import BrokenModel

XGBOOST_RUNTIME = "mlserver_mme.runtimes.xgboost.XGBoostModel"
OWN_SETTINGS = "model-settings.json"

# MLServer's runtimes that read model files as data, by the module that must be installed.
_DATA_RUNTIMES = {
    "mlserver_xgboost": "mlserver_xgboost.XGBoostModel",
    "mlserver_lightgbm": "mlserver_lightgbm.LightGBMModel",
}
_PICKLE_RUNTIMES = {"mlserver_sklearn": "mlserver_sklearn.SKLearnModel"}  # joblib files are pickles

_KEPT = {"implementation", "parameters", "inputs", "outputs", "platform", "versions"}
_IGNORED = {"name"}
_KEPT_PARAMETERS = {"version", "format", "content_type", "extra"}
_IGNORED_PARAMETERS = {"uri"}


def default_allowed_runtimes(allow_pickle: bool) -> List[str]:
    """This package's runtime and MLServer's data-only runtimes that are installed."""
    candidates = {**_DATA_RUNTIMES, **(_PICKLE_RUNTIMES if allow_pickle else {})}
    installed = [runtime for module, runtime in candidates.items() if importlib.util.find_spec(module)]
    return [XGBOOST_RUNTIME, *installed]


def read_declared(path: str, target: str, allowed: List[str]) -> dict:
    """The settings an artifact declares, reduced to what it may set; raises BrokenModel."""
    try:
        with open(path, "rb") as file:
            declared = json.load(file)
    except ValueError as error:
        raise BrokenModel(f"The {OWN_SETTINGS} of '{target}' is not valid: {error}") from None
    if not isinstance(declared, dict):
        raise BrokenModel(f"The {OWN_SETTINGS} of '{target}' is not valid: it must be a JSON object")
    kept = _kept(declared, _KEPT, _IGNORED, target, "")
    implementation = kept.get("implementation", XGBOOST_RUNTIME)
    if implementation not in allowed:
        raise BrokenModel(
            f"The {OWN_SETTINGS} of '{target}' names the runtime '{str(implementation)[:200]}', which this "
            "server does not allow (MLSERVER_MME_ALLOWED_RUNTIMES)."
        )
    kept["implementation"] = implementation
    parameters = kept.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, dict):
            raise BrokenModel(f"The {OWN_SETTINGS} of '{target}' is not valid: parameters must be an object")
        kept["parameters"] = _kept(parameters, _KEPT_PARAMETERS, _IGNORED_PARAMETERS, target, "parameters.")
    return kept


def _kept(settings: dict, kept: set, ignored: set, target: str, where: str) -> dict:
    refused = sorted(key for key in settings if key not in kept | ignored and not key.startswith("_"))
    if refused:
        raise BrokenModel(
            f"The {OWN_SETTINGS} of '{target}' sets {', '.join(where + key[:100] for key in refused[:5])}, "
            "which an artifact may not set."
        )
    return {key: value for key, value in settings.items() if key in kept}
