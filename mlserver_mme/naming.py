"""Target-model paths and the MLServer (V2) names that stand for them.

A target model is the path of an artifact relative to the model prefix, as
SageMaker's ``X-Amzn-SageMaker-Target-Model`` header carries it. It is checked
here before anything touches storage.

V2 names must fit in one URL path segment, so paths are mapped to names by a
reversible rule (a bijection between valid paths and names):

1. every character other than ``A-Z a-z 0-9 . _ -`` is written as ``~XX``, the
   upper-case hex of each of its UTF-8 bytes (``/`` becomes ``~2F``);
2. a final ``.tar.gz`` is dropped; a path that does not end in ``.tar.gz`` gets a
   final ``~`` instead (a lone ``~`` cannot come from rule 1). The path ``.tar.gz``
   itself keeps its suffix and gets the ``~`` (``.tar.gz~``), so no name is empty.

So ``Houston_TX.tar.gz`` is ``Houston_TX``, ``northeast/Boston_MA.tar.gz`` is
``northeast~2FBoston_MA`` and a bare ``model.json`` is ``model.json~``.

Names are computed on every request and not cached: escaping a typical path takes
1-3 microseconds, while a cache keyed by (possibly hostile, up to 1024-character)
paths would hold kilobytes per distinct path.

Models loaded through SageMaker's hosting contract (``POST /models``) have an
opaque name instead of a path; their V2 name is ``hosted~~`` and the name
escaped by rule 1. No path maps to a name holding ``~~``.
"""

import re

MAX_TARGET_LENGTH = 1024
TAR_GZ = ".tar.gz"

_UNSAFE = re.compile(r"[^A-Za-z0-9._\-]+")
_ESCAPED = re.compile(r"~[0-9A-F]{2}(?:~[0-9A-F]{2})*")  # a leading literal: searched fast


class NotATargetPath(ValueError):
    """The target model is not a valid relative path; the message says why."""


def validate_target(target: str) -> str:
    """Return ``target`` if it is a safe relative path under the prefix, else raise."""
    if not target:
        raise NotATargetPath("the target model is empty")
    if len(target) > MAX_TARGET_LENGTH:
        raise NotATargetPath(f"the target model is longer than {MAX_TARGET_LENGTH} characters")
    if not target.isprintable():
        raise NotATargetPath("the target model holds a character that is not printable")
    if target[0].isspace():
        raise NotATargetPath("the target model starts with a space")
    if "\\" in target:
        raise NotATargetPath("the target model holds a backslash")
    if target.startswith("/"):
        raise NotATargetPath("the target model is an absolute path")
    for segment in target.split("/"):
        if segment == "":
            raise NotATargetPath("the target model has an empty path segment")
        if segment in (".", ".."):
            raise NotATargetPath(f"the target model has a '{segment}' path segment")
    return target


def v2_name(target: str) -> str:
    """The MLServer model name for a (valid) target model path."""
    if target.endswith(TAR_GZ) and target != TAR_GZ:
        stem, suffix = target[: -len(TAR_GZ)], ""
    else:
        stem, suffix = target, "~"
    return _escaped(stem) + suffix


def target_of(name: str) -> str:
    """The target model path of a V2 name; raises NotATargetPath if no path maps to it."""
    if name.endswith("~"):
        stem, suffix = name[:-1], ""
    else:
        stem, suffix = name, TAR_GZ
    try:
        target = _ESCAPED.sub(lambda m: bytes.fromhex(m.group().replace("~", "")).decode("utf-8"), stem)
    except UnicodeDecodeError:
        raise NotATargetPath(f"'{name[:100]}' is not a model name") from None
    target = validate_target(target + suffix)
    # Only names produced by v2_name are accepted: this keeps the mapping one-to-one.
    if v2_name(target) != name:
        raise NotATargetPath(f"'{name[:100]}' is not a model name")
    return target


HOSTED_PREFIX = "hosted~~"


def hosted_name(model_name: str) -> str:
    """The MLServer name of a model loaded through the hosting contract."""
    return HOSTED_PREFIX + _escaped(model_name)


def is_hosted_name(name: str) -> bool:
    return name.startswith(HOSTED_PREFIX)


def _escaped(text: str) -> str:
    """Rule 1: each run of characters outside ``A-Z a-z 0-9 . _ -`` as ``~XX`` per UTF-8 byte."""
    return _UNSAFE.sub(lambda run: "".join(f"~{byte:02X}" for byte in run.group().encode("utf-8")), text)
