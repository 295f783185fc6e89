"""The rooms of the house and the arrows between them: the core (promptopt/ outside cli/, testing/ and
integrations/) imports no UI, no test kit or server, no strategy, no task and no integration; only tests,
benches and the testing kit import a test server; and the core loads without torch. Plugins are found by name."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import promptopt
from promptopt import registry
from promptopt.errors import RegistryError

PACKAGE = Path(promptopt.__file__).parent
REPO = PACKAGE.parent
SERVERS = ("promptopt.testing.openai_server", "promptopt.testing.faultproxy", "promptopt.testing._http",
           "promptopt.testing.vllm_server")
CORE_MODULES = ("loop", "api", "resolved", "strategy", "scoring.scorer", "types", "task", "config", "runlog", "scoring.cache")


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module a file imports (at any depth: late imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return names


WINGS = ("cli", "testing", "integrations")  # the rooms above the core: they may import it, never the reverse


def core_files() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in WINGS]


def _under(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_core_imports_no_ui_test_kit_strategy_task_or_integration():
    banned = ("promptopt.cli", "promptopt.testing", "promptopt.strategies", "promptopt.tasks",
              "promptopt.integrations")
    files = core_files()
    assert PACKAGE / "api.py" in files and not any(p.relative_to(PACKAGE).parts[0] == "integrations" for p in files)
    bad = {str(p.relative_to(REPO)): sorted(n for n in imported_modules(p) if _under(n, banned)) for p in files}
    assert not {k: v for k, v in bad.items() if v}


def test_the_core_names_no_integration_module_in_a_string():
    """An integration is a plugin found by its registered name (task "lmeval", callback "mlflow"), not by a
    module path the core spells out (importlib.import_module("promptopt.integrations...") would dodge the test above)."""
    bad = [str(p.relative_to(REPO)) for p in core_files() if "promptopt.integrations" in p.read_text(encoding="utf-8")]
    assert not bad


def test_integrations_are_found_by_name():
    assert registry.get("tasks", "lmeval").__module__ == "promptopt.integrations.lmeval"
    assert registry.get("callbacks", "mlflow").__module__ == "promptopt.integrations.mlflow_tracking"


def test_only_tests_benches_and_the_testing_kit_import_a_test_server():
    places = [*PACKAGE.rglob("*.py"), *(REPO / "strategies").rglob("*.py"), *(REPO / "tasks").rglob("*.py")]
    bad = {str(p.relative_to(REPO)): sorted(n for n in imported_modules(p) if _under(n, SERVERS))
           for p in places if p.relative_to(PACKAGE.parent).parts[:2] != ("promptopt", "testing")}
    assert not {k: v for k, v in bad.items() if v}


def test_the_core_loads_without_torch():
    modules = ", ".join(f"promptopt.{m}" for m in CORE_MODULES)
    code = (f"import sys, promptopt, {modules}; promptopt.optimize, promptopt.Context, promptopt.register_strategy; "
            "bad = [m for m in ('torch', 'transformers', 'vllm') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_core_import_loads_no_plugin_modules():
    code = ("import sys, promptopt, promptopt.api, promptopt.cli, promptopt.loop, promptopt.testing;"
            "bad=[m for m in sys.modules if m.startswith(('promptopt.strategies.', 'promptopt.tasks.'))];"
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_core_sources_do_not_reference_plugin_packages():
    import pathlib
    import promptopt
    root = pathlib.Path(promptopt.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "promptopt.strategies" not in text.replace('"promptopt.strategies"', "") or path.name == "registry.py", path
        assert "from promptopt.tasks" not in text and "import promptopt.tasks" not in text, path


def test_did_you_mean():
    with pytest.raises(RegistryError, match="did you mean 'paraphrase'"):
        registry.get("strategies", "paraphrse")


def test_entry_points_resolve():
    assert "paraphrase" in registry.names("strategies")
    assert registry.get("backends", "fake").__name__ == "FakeBackend"
