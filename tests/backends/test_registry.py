"""The registry: built-in methods found by file name without importing them, imported on use, plus plugins."""

import subprocess
import sys
from pathlib import Path

import pytest

import quantbench.backends
from quantbench.backends import registry
from quantbench.backends.registry import BACKENDS, backend_names, get_backend
from quantbench.errors import QuantbenchError


def test_every_module_of_the_package_but_the_contract_is_a_method_baseline_first():
    files = {path.stem for path in Path(quantbench.backends.__file__).parent.glob("*.py")} - {"__init__"}
    assert set(BACKENDS) == files - {"base", "layers", "layout", "registry", "unit_bits"}
    assert list(BACKENDS) == ["baseline", *sorted(set(BACKENDS) - {"baseline"})]


def test_listing_methods_imports_no_adapter_and_no_library():
    code = (
        "import sys; from quantbench.backends.registry import backend_names; names = backend_names(); "
        "print(sorted(m for m in sys.modules if m in {'quantbench.backends.' + n for n in names} "
        "or m.split('.')[0] in ('bitsandbytes', 'torchao', 'hqq', 'optimum', 'gptqmodel')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("name", "cls"), [("awq", "AwqBackend"), ("gptq", "GptqBackend"), ("dynamic", "DynamicBackend")]
)
def test_a_method_is_the_backend_class_of_its_module_with_its_name(name, cls):
    """awq.py imports gptq's shared base class, and gptq.py defines it: each name finds its own class."""
    backend = get_backend(name)
    assert type(backend).__name__ == cls and backend.name == name


def test_a_module_whose_backend_has_another_name_is_one_line(monkeypatch):
    monkeypatch.setitem(registry.BACKENDS, "layout", "quantbench.backends.layout")
    with pytest.raises(QuantbenchError) as err:
        get_backend("layout")
    assert str(err.value) == (
        "method 'layout': cannot import quantbench.backends.layout "
        "(quantbench.backends.layout defines no Backend subclass with name = 'layout')"
    )


def test_plugins_come_after_the_built_in_methods(monkeypatch):
    monkeypatch.setenv("QUANTBENCH_BACKENDS", "mine=quantbench.backends.rtn:RtnBackend")
    assert list(backend_names())[-1] == "mine"
    assert type(get_backend("mine")).__name__ == "RtnBackend"
