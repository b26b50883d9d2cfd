"""Model artifacts for the tests, made from the bundled legacy-binary examples.

Each entry of ``build()`` maps a target path to the bytes stored under the prefix.
"""

import io
import json
import os
import pickle
import struct
import tarfile

import numpy as np
import xgboost as xgb

from mlserver_mme.runtimes import model_file

from .paths import EXAMPLES, FIXTURES, MATRIX, ROOT  # noqa: F401 (ROOT and EXAMPLES: for the tests)

EXPECTED = json.load(open(os.path.join(FIXTURES, "expected_1_7_6.json")))
ROWS = EXPECTED["rows"]


def example_targets() -> list:
    return sorted(EXPECTED["predictions"])


def example_bytes(target: str) -> bytes:
    with open(os.path.join(EXAMPLES, target), "rb") as file:
        return file.read()


def legacy_model_bytes(target: str = "Houston_TX.tar.gz") -> bytes:
    with tarfile.open(os.path.join(EXAMPLES, target)) as tar:
        return tar.extractfile("xgboost-model").read()


def booster(target: str = "Houston_TX.tar.gz") -> xgb.Booster:
    """The bundled legacy-binary model, read as the server reads it (XGBoost 3.1+ do not read it)."""
    return model_file.read(legacy_model_bytes(target), allow_pickle=False).booster()


def predict(model_bytes: bytes, rows=ROWS) -> list:
    """What xgboost itself predicts for a (non-pickle) model file, as Python floats."""
    model = model_file.read(model_bytes, allow_pickle=False).booster()
    return [float(v) for v in model.predict(xgb.DMatrix(np.asarray(rows, dtype=np.float64)))]


def tar_bytes(members: dict, mode: str = "w:gz") -> bytes:
    """A tar archive of regular files ``{name: bytes}``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.addfile(member, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def symlink_member(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


def build() -> dict:
    """Target path -> stored bytes, for every artifact the end-to-end tests use."""
    houston = booster()
    as_json = bytes(houston.save_raw("json"))
    as_ubj = bytes(houston.save_raw("ubj"))
    legacy = legacy_model_bytes()
    artifacts = {target: example_bytes(target) for target in example_targets()}
    artifacts.update(
        {
            # every format and name SageMaker's containers write
            "formats/json-as-xgboost-model.tar.gz": tar_bytes({"xgboost-model": as_json}),
            "formats/ubj-as-xgboost-model.tar.gz": tar_bytes({"xgboost-model": as_ubj}),
            "formats/model-json.tar.gz": tar_bytes({"model.json": as_json}),
            "formats/model-ubj.tar.gz": tar_bytes({"model.ubj": as_ubj}),
            "formats/model-bst.tar.gz": tar_bytes({"model.bst": legacy}),
            "formats/legacy.tgz": tar_bytes({"xgboost-model": legacy}),
            "formats/plain.tar": tar_bytes({"./xgboost-model": legacy}, mode="w"),
            "formats/bare-model.json": as_json,
            "formats/xgboost-model": legacy,
            # for single-flight and one-download checks, each used by one test only
            "once/v2-then-sagemaker.tar.gz": tar_bytes({"xgboost-model": legacy}),
            "once/concurrent.tar.gz": tar_bytes({"xgboost-model": legacy}),
            "once/unload-reload.tar.gz": tar_bytes({"xgboost-model": legacy}),
            # broken ones
            "broken/corrupt.tar.gz": b"\x1f\x8b\x08\x00" + b"not really gzip" * 10,
            "broken/truncated.tar.gz": tar_bytes({"xgboost-model": legacy})[:2000],
            "broken/not-a-model.tar.gz": tar_bytes({"xgboost-model": b"this is not a model"}),
            "broken/two-files.tar.gz": tar_bytes({"a.bin": legacy, "b.bin": legacy}),
            "broken/traversal.tar.gz": tar_bytes({"../escaped": b"x", "xgboost-model": legacy}),
            "broken/absolute.tar.gz": tar_bytes({"/tmp/absolute-member": b"x"}),
            "broken/symlink.tar.gz": tar_with(symlink_member("xgboost-model", "/etc/passwd")),
            "broken/pickle.tar.gz": tar_bytes({"xgboost-model": pickle.dumps(houston)}),
            "broken/bad-settings.tar.gz": tar_bytes({"model-settings.json": b"{not json"}),
            "broken/missing-runtime.tar.gz": tar_bytes(
                {"model-settings.json": json.dumps({"implementation": "no_such_module.Model"}).encode()}
            ),
            # a model served by another MLServer runtime, named in the archive
            "custom/doubler.tar.gz": tar_bytes(
                {"model-settings.json": json.dumps({"implementation": "doubler.Doubler"}).encode()}
            ),
        }
    )
    return artifacts


def code_bearing_archive(source_folder: str, marker: str) -> bytes:
    payload = f"""
import pathlib
from mlserver import MLModel
pathlib.Path({marker!r}).write_text("archive code ran")
class Model(MLModel):
    async def load(self):
        return True
"""
    settings = {"implementation": "payload.Model", "_source": os.path.join(source_folder, "model-settings.json")}
    return tar_bytes({"model-settings.json": json.dumps(settings).encode(), "payload.py": payload.encode()})


def corrupted_legacy_model() -> bytes:
    """Four words of Houston_TX's trees overwritten: XGBoost loads it, then crashes predicting."""
    data = bytearray(legacy_model_bytes())
    for position, value in ((9604, 0x7FFFFFFF), (17516, 0x7FFFFFFF), (33268, 0x41414141), (31748, 0x41414141)):
        data[position : position + 4] = struct.pack("<I", value)
    return bytes(data)


def ubj_allocation_bomb() -> bytes:
    """Houston_TX as UBJSON with an empty array's length rewritten to 2^31: XGBoost reserves it."""
    data = bytearray(booster().save_raw("ubj"))
    count = data.find(b"#L")
    data[count + 2 : count + 10] = struct.pack(">q", 2**31)
    return bytes(data)


def tar_of(*members, mode: str = "w:gz", format=tarfile.PAX_FORMAT) -> bytes:
    """A tar archive of ``TarInfo`` members, each given as ``info`` or ``(info, data)``, in order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode, format=format) as tar:
        for member in members:
            info, data = member if isinstance(member, tuple) else (member, b"")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def tar_member(name: str, type=tarfile.REGTYPE, linkname: str = "", **fields) -> tarfile.TarInfo:
    """A ``TarInfo`` of any type; ``fields`` set other attributes (``pax_headers``, ``mtime``...)."""
    info = tarfile.TarInfo(name)
    info.type = type
    info.linkname = linkname
    for field, value in fields.items():
        setattr(info, field, value)
    return info


def path_max_escape(destination: str, outside: str, data: bytes) -> bytes:
    """CVE-2025-4517: an archive writing ``data`` to ``outside`` (relative to the parent of ``destination``).

    Sixteen symlinks each expand to a long folder name, so the expanded path of
    the last link, which points back up to ``destination``, outgrows PATH_MAX:
    ``os.path.realpath`` stops expanding there and sees ``escape`` (that link
    plus ``..``) as inside, while the kernel follows it to the parent.
    """
    steps = "abcdefghijklmnop"
    path_max = os.pathconf(os.path.dirname(destination), "PC_PATH_MAX")
    component = "d" * ((path_max - len(destination) - 1) // (len(steps) + 1))
    members = []
    path = ""
    for step in steps:
        members.append(tar_member(os.path.join(path, component), tarfile.DIRTYPE))
        members.append(tar_member(os.path.join(path, step), tarfile.SYMTYPE, component))
        path = os.path.join(path, component)
    last_link = os.path.join(*steps, "l" * 254)
    members.append(tar_member(last_link, tarfile.SYMTYPE, os.path.join(*[".."] * len(steps))))
    members.append(tar_member("escape", tarfile.SYMTYPE, os.path.join(last_link, "..")))
    members.append((tar_member(os.path.join("escape", outside)), data))
    return tar_of(*members)


def header_bomb(kind: str, size: int) -> bytes:
    """A gzip tar whose first header is a ``size``-byte PAX record (``"pax"``) or GNU long name (``"gnu"``).

    Written in chunks: neither the archive nor the header is ever whole in memory here.
    """
    import gzip

    def block(name: str, type: bytes, length: int) -> bytes:
        return tar_member(name, type, size=length).tobuf(tarfile.USTAR_FORMAT)

    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=1) as archive:
        if kind == "pax":
            prefix = b"%d comment=" % size  # a record: "<its length> <keyword>=<value>\n"
            archive.write(block("pax", tarfile.XHDTYPE, size) + prefix)
            left, end = size - len(prefix) - 1, b"\n"
        else:
            archive.write(block("././@LongLink", tarfile.GNUTYPE_LONGNAME, size))
            left, end = size - 1, b"\0"
        chunk = b"a" * (1 << 20)
        while left > 0:
            archive.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
        archive.write(end + b"\0" * (-size % tarfile.BLOCKSIZE))
        archive.write(block("xgboost-model", tarfile.REGTYPE, 0) + b"\0" * 2 * tarfile.BLOCKSIZE)
    return buffer.getvalue()


def pax_record(keyword: bytes, value: bytes) -> bytes:
    """One PAX record: ``<its length> <keyword>=<value>\\n``."""
    body = b" %s=%s\n" % (keyword, value)
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return b"%d%s" % (length, body)


def pax_tar(records: bytes, type=tarfile.XHDTYPE) -> bytes:
    """A gzip tar of one empty file ``m`` after a PAX header of ``records`` as given (tarfile would not write some)."""
    import gzip

    pax = tar_member("pax", type, size=len(records)).tobuf(tarfile.USTAR_FORMAT)
    padding = b"\0" * (-len(records) % tarfile.BLOCKSIZE)
    end = b"\0" * 2 * tarfile.BLOCKSIZE
    return gzip.compress(pax + records + padding + tar_member("m").tobuf(tarfile.USTAR_FORMAT) + end)


def many_class_model(classes: int) -> bytes:
    """A two-tree softprob model (3 features) whose header claims ``classes`` classes: each row predicts that many."""
    rng = np.random.default_rng(0)
    features, labels = rng.random((50, 3), dtype=np.float32), rng.integers(0, 2, 50)
    model = xgb.train({"objective": "multi:softprob", "num_class": 2, "max_depth": 1}, xgb.DMatrix(features, labels), 1)
    saved = json.loads(bytes(model.save_raw("json")))
    saved["learner"]["learner_model_param"]["num_class"] = str(classes)
    saved["learner"]["learner_model_param"]["base_score"] = "[" + ",".join(["5E-1"] * classes) + "]"  # one per class
    saved["learner"]["objective"]["softmax_multiclass_param"]["num_class"] = str(classes)
    return json.dumps(saved).encode()


def chain_model(trees: int, depth: int) -> bytes:
    """A valid regression model of ``trees`` chains ``depth`` splits deep: a row with a large feature 0 walks
    every split of every tree (``trees * depth`` node visits), one with a small one stops at the first."""
    template = json.load(open(os.path.join(MATRIX, "3.2.0", "reg_squarederror.json")))
    nodes = 2 * depth + 1  # split k at 2k, its left leaf at 2k + 1, the last right leaf at 2 * depth
    left = [k + 1 if k % 2 == 0 and k < 2 * depth else -1 for k in range(nodes)]
    right = [k + 2 if k % 2 == 0 and k < 2 * depth else -1 for k in range(nodes)]
    parents = [2147483647] + [k - 1 if k % 2 else k - 2 for k in range(1, nodes)]
    conditions = [float(k // 2) if k % 2 == 0 and k < 2 * depth else 0.001 for k in range(nodes)]
    tree = {
        "base_weights": [0.0] * nodes, "categories": [], "categories_nodes": [], "categories_segments": [],
        "categories_sizes": [], "default_left": [0] * nodes, "left_children": left, "loss_changes": [0.0] * nodes,
        "parents": parents, "right_children": right, "split_conditions": conditions, "split_indices": [0] * nodes,
        "split_type": [0] * nodes, "sum_hessian": [1.0] * nodes,
        "tree_param": {"num_deleted": "0", "num_feature": "6", "num_nodes": str(nodes), "size_leaf_vector": "1"},
    }
    model = template["learner"]["gradient_booster"]["model"]
    model["trees"] = [{**tree, "id": number} for number in range(trees)]
    model["tree_info"] = [0] * trees
    model["iteration_indptr"] = list(range(trees + 1))
    model["gbtree_model_param"]["num_trees"] = str(trees)
    return json.dumps(template).encode()
