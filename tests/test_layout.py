"""The core never imports strategies or tasks; plugins are found by name."""
import subprocess
import sys

import pytest

from promptopt import registry
from promptopt.errors import RegistryError


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
