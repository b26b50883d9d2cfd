"""What an artifact's own ``model-settings.json`` may say.

An archive may name the MLServer runtime that serves it. Left as MLServer reads
it, that file is code: ``implementation`` imports any class on the path (this
package's router included), a ``_source`` key puts the unpacked folder on
``sys.path`` first (so the archive's own ``.py`` files run), and
``parameters.environment_tarball`` makes MLServer unpack and activate a Python
environment. So the file is read as data and only this is kept:

- ``implementation``: one of the operator's allowed runtimes
  (``MLSERVER_MME_ALLOWED_RUNTIMES``; by default only this package's XGBoost
  runtime, the one whose model files are checked in an isolated child: other
  runtimes parse their files in the server process);
- ``parameters``: ``version``, ``format``, ``content_type`` and ``extra``
  (``uri`` is set by the server);
- ``inputs``, ``outputs``, ``platform``, ``versions``: descriptive only.

``name`` is ignored (the server names models), keys starting with ``_`` are
dropped, and any other key refuses the artifact, as does a file over
``MAX_SETTINGS_BYTES`` (it is read in the server).
"""

import json
import os
from typing import List

from ..errors import BrokenModel

XGBOOST_RUNTIME = "mlserver_mme.runtimes.xgboost.XGBoostModel"
OWN_SETTINGS = "model-settings.json"
MAX_SETTINGS_BYTES = 64 * 1024

_KEPT = {"implementation", "parameters", "inputs", "outputs", "platform", "versions"}
_IGNORED = {"name"}
_KEPT_PARAMETERS = {"version", "format", "content_type", "extra"}
_IGNORED_PARAMETERS = {"uri"}


def read_declared(path: str, target: str, allowed: List[str]) -> dict:
    """The settings an artifact declares, reduced to what it may set; raises BrokenModel."""
    if os.path.getsize(path) > MAX_SETTINGS_BYTES:  # read in the server: keep it small
        raise BrokenModel(f"The {OWN_SETTINGS} of '{target}' is larger than {MAX_SETTINGS_BYTES} bytes")
    try:
        with open(path, "rb") as file:
            declared = json.load(file)
    except RecursionError:
        raise BrokenModel(f"The {OWN_SETTINGS} of '{target}' is nested too deeply") from None
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
