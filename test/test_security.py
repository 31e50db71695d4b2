"""No code execution from data: no pickle anywhere in the package, weight messages capped and validated."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from td3_drive.rl import weights

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "td3_drive"
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}


def _is_true(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def pickle_uses(source: str, filename: str = "<src>") -> list[str]:
    """Pickle entry points in ``source`` (code only: comments and docstrings that say 'no pickle' are fine)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            found.append(f"{where} from {node.module} import")
        elif isinstance(node, ast.Name) and node.id in PICKLE_MODULES:
            found.append(f"{where} uses {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in ("read_pickle", "to_pickle", "__reduce__"):
            found.append(f"{where} uses .{node.attr}")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if name.endswith("torch.load"):
                if not _is_true(keywords.get("weights_only", ast.Constant(None))):
                    found.append(f"{where} {name}( without weights_only=True")
            if name.split(".")[-1] == "load" and name.split(".")[0] in ("np", "numpy") and any(
                    k == "allow_pickle" and not (isinstance(v, ast.Constant) and v.value is False)
                    for k, v in keywords.items()):
                found.append(f"{where} {name}(..., allow_pickle=...)")
            if name.endswith("torch.save"):  # torch.save writes a pickle; we write safetensors
                found.append(f"{where} {name}(")
    return found


@pytest.mark.parametrize("snippet", [
    "import pickle", "from pickle import loads", "import cloudpickle as cp", "x = pickle.loads(b'')",
    "import torch\ntorch.load('f')", "import torch\ntorch.load('f', weights_only=False)",
    "import numpy as np\nnp.load('f', allow_pickle=True)", "import numpy\nnumpy.load('f', allow_pickle=flag)",
    "import pandas as pd\npd.read_pickle('f')", "import torch\ntorch.save({}, 'f')",
])
def test_scanner_catches(snippet: str) -> None:
    assert pickle_uses(snippet), snippet


@pytest.mark.parametrize("snippet", [
    '"""no pickle here"""', "# pickle would be bad", "import torch\ntorch.load('f', weights_only=True)",
    "import numpy as np\nnp.load('f')", "import numpy as np\nnp.load('f', allow_pickle=False)",
])
def test_scanner_allows(snippet: str) -> None:
    assert pickle_uses(snippet) == [], snippet


def test_package_source_has_no_pickle() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20, f"package source not found under {PACKAGE}"
    found = [hit for f in files for hit in pickle_uses(f.read_text(), str(f.relative_to(PACKAGE.parent)))]
    assert found == [], "pickle entry points in the package:\n" + "\n".join(found)


def test_oversized_weights_rejected_before_parsing(monkeypatch) -> None:
    def must_not_parse(*args, **kwargs):
        raise AssertionError("an oversized message was parsed")

    monkeypatch.setattr(weights, "_read_header", must_not_parse)
    monkeypatch.setattr(weights, "load_safetensors", must_not_parse)
    monkeypatch.setattr(weights.json, "loads", must_not_parse)
    blob = b"\xff" * (1024 + 1)
    with pytest.raises(weights.WeightsRejected) as info:
        weights.decode_actor(blob, {"frame_stack": 4}, max_bytes=1024)
    assert info.value.reason == "oversized"
    with pytest.raises(weights.WeightsRejected) as info:  # the default cap: 64 MiB
        weights.decode_actor(bytes(weights.MAX_WEIGHT_BYTES + 1), {"frame_stack": 4})
    assert info.value.reason == "oversized"


def test_policy_rejects_oversized_weight_message_unparsed(monkeypatch) -> None:
    from td3_drive import topics as T
    from td3_drive.nodes import policy as policy_module
    from td3_drive.nodes.policy import PolicyNode
    from td3_drive.runtime.local import LocalRuntime
    from td3_drive.runtime.messages import new_message

    rt = LocalRuntime({"policy": {"max_weight_bytes": 4096, "backend": "torch", "device": "cpu"}})
    node = PolicyNode(rt.context("policy"))
    version = node.weights_version
    monkeypatch.setattr(policy_module, "decode_actor", lambda *a, **k: pytest.fail("decoded an oversized message"))
    rt.publish(T.Topics().actor_weights, new_message(T.UINT8_ARRAY, data=np.zeros(4097, np.uint8)))
    rt.spin()
    assert node.drops.counts == {"weights_oversized": 1} and node.weights_version == version
