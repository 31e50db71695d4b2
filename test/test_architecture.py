"""The layout's promises, checked on the source: layers only import downward, no import cycle,
thin node files that end in main(), and tests that share helpers only through test/support.py."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "td3_drive"
TESTS = Path(__file__).resolve().parent

#: rank of each part of the package: a module may import its own part and lower ranks only
LAYERS = {"topics": 0, "settings": 0, "runtime": 1, "rl": 1, "driving": 1, "carla": 1, "nodes": 2, "sim": 2, "app": 3,
          "__main__": 4, "bench": 4, "__init__": 4}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    """Every td3_drive module ``path`` imports, at module level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from td3_drive.app import config` imports the module td3_drive.app.config
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                     for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


GRAPH = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def test_the_graph_sees_the_imports():
    # a broken walker would pass every test below; these edges exist by design
    assert "td3_drive.rl.learner" in GRAPH["td3_drive.rl.session"]
    assert "td3_drive.nodes.trainer" in GRAPH["td3_drive.app.embedded"]
    assert "td3_drive.topics" in GRAPH["td3_drive.runtime.interface"]
    assert set(LAYERS) >= {part(m) for m in MODULES}, "a new part of the package needs a layer"


def test_no_import_goes_up_a_layer_or_sideways():
    wrong = [f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets
             if part(a) != part(b) and LAYERS[part(b)] >= LAYERS[part(a)]]
    assert wrong == [], "imports against the layer order (app -> nodes, sim -> rl, driving, runtime, carla -> topics)"


def test_no_import_cycle():
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        for target in sorted(GRAPH[module]):
            visit(target, path + [module])
        done.add(module)

    for module in sorted(GRAPH):
        visit(module, [])


def test_rl_and_driving_stay_free_of_ros_and_of_each_other():
    for module, path in MODULES.items():
        outside = _third_party(path)
        if part(module) in ("rl", "driving"):
            assert not any(name.startswith("rclpy") for name in outside), f"{module} imports rclpy"
        if part(module) == "driving":
            assert not any(name.startswith("torch") for name in outside), f"{module} imports torch"


def _third_party(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return {n for n in names if not n.startswith("td3_drive")}


@pytest.mark.parametrize("path", sorted((PACKAGE / "nodes").glob("*.py")), ids=lambda p: p.name)
def test_node_files_end_in_main(path: Path):
    if path.name in ("__init__.py", "bridge.py"):  # the package marker; subscriptions the nodes share
        return
    last = [n for n in ast.parse(path.read_text()).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))][-1]
    assert isinstance(last, ast.FunctionDef) and last.name == "main", f"{path.name} does not end in main()"


def test_the_trainer_node_is_wiring():
    lines = (PACKAGE / "nodes" / "trainer.py").read_text().count("\n")
    assert lines <= 250, f"nodes/trainer.py has {lines} lines: scheduling and scoring belong in rl/ and driving/"


def test_tests_share_helpers_only_through_support():
    for path in TESTS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("test_", "conftest")), f"{path.name} imports {node.module}"


def test_tools_that_need_no_learning_run_without_torch_or_the_simulator(tmp_path):
    """`td3-drive rqt-perspective` and `domain-bridge` run where torch and highway-env are absent (the
    ROS 2 images install neither), so the command line imports a command's modules when it runs."""
    import subprocess
    import sys

    blocked = "import sys\nfor m in ('torch', 'gymnasium', 'highway_env'): sys.modules[m] = None\n"
    for argv in (["rqt-perspective", "--namespace", "v1", "-o", str(tmp_path / "p.perspective")],
                 ["domain-bridge", "--namespace", "v1", "--role-name", "hero1", "--vehicle-domain", "11",
                  "--trainer-domain", "10", "-o", str(tmp_path / "bridge.yaml")]):
        code = blocked + f"from td3_drive.app import cli\nsys.exit(cli.main({argv!r}))"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "p.perspective").is_file() and (tmp_path / "bridge.yaml").is_file()
