"""The one Registry type behind every extension point."""

from __future__ import annotations

import sys
import types

import pytest

from promptbench.core.registry import Registry, UnknownName, did_you_mean


def test_register_get_names_and_did_you_mean():
    reg: Registry[int] = Registry("widget")
    reg.register("coop", 1)

    @reg.register("cocoop")
    def f():  # decorator form returns the object
        return 2

    assert reg.get("coop") == 1 and reg.get("cocoop") is f
    assert reg.names() == ["cocoop", "coop"] and "coop" in reg and len(reg) == 2
    with pytest.raises(UnknownName) as err:
        reg.get("cop")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("unknown widget 'cop'; did you mean coop, cocoop?")
    assert did_you_mean("zzz", ["coop"]) == ""


def test_names_are_checked_and_double_registration_refused():
    reg: Registry[object] = Registry("widget")
    with pytest.raises(ValueError, match="lowercase"):
        reg.register("CoOp", 1)
    reg.register("a", object())
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a", object())


def test_lazy_location_is_imported_only_when_asked(monkeypatch):
    mod = types.ModuleType("pb_lazy_probe")
    mod.thing = {"x": 1}
    reg: Registry[dict] = Registry("thing")
    reg.register_lazy("probe", "pb_lazy_probe:thing")
    assert "pb_lazy_probe" not in sys.modules and reg.names() == ["probe"]
    monkeypatch.setitem(sys.modules, "pb_lazy_probe", mod)
    assert reg.get("probe") == {"x": 1}


def test_package_scan_registers_every_module(tmp_path, monkeypatch):
    pkg = tmp_path / "pb_scan_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from promptbench.core.registry import Registry\nREG = Registry('part', "
                                     "package='pb_scan_pkg', skip={'helpers'})\n")
    (pkg / "one.py").write_text("from pb_scan_pkg import REG\nREG.register('one', 1)\n")
    (pkg / "helpers.py").write_text("raise RuntimeError('skipped modules are never imported')\n")
    (pkg / "_private.py").write_text("raise RuntimeError('private modules are never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import pb_scan_pkg

    assert pb_scan_pkg.REG.names() == ["one"]
    monkeypatch.delitem(sys.modules, "pb_scan_pkg")
    monkeypatch.delitem(sys.modules, "pb_scan_pkg.one")


def test_declared_names_reads_decorators_without_importing(tmp_path, monkeypatch):
    pkg = tmp_path / "pb_decl_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from promptbench.core.registry import Registry\nREG = Registry('part', "
                                     "package='pb_decl_pkg', skip={'helpers'})\n")
    (pkg / "one.py").write_text("raise RuntimeError('never imported')\nfrom pb_decl_pkg import REG\n\n"
                                "@REG.register('one')\nclass One: ...\n")
    (pkg / "two.py").write_text("raise RuntimeError('never imported')\n\n@register('two')\ndef two(): ...\n")
    (pkg / "helpers.py").write_text("@register('skipped')\nclass S: ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import pb_decl_pkg

    pb_decl_pkg.REG.register_lazy("three", "somewhere:else")
    assert pb_decl_pkg.REG.declared_names() == ["one", "three", "two"]
    assert "pb_decl_pkg.one" not in sys.modules
    monkeypatch.delitem(sys.modules, "pb_decl_pkg")


def test_declared_method_names_equal_the_imported_registry():
    """``promptbench list`` prints the names read from the sources; they must be the registry's own."""
    from promptbench.methods.registry import METHODS

    assert METHODS.declared_names() == METHODS.names()


def test_declared_attribute_reads_class_literals_without_importing(tmp_path, monkeypatch):
    """A literal in the decorated class, or in a same-module base it inherits from; a computed value is left out."""
    pkg = tmp_path / "pb_attr_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from promptbench.core.registry import Registry\nREG = Registry('part', "
                                     "package='pb_attr_pkg')\n")
    (pkg / "a.py").write_text("raise RuntimeError('never imported')\n\nclass Base:\n    family = 'text'\n\n"
                              "@register('own')\nclass Own(Base):\n    family: str = 'visual'\n\n"
                              "@register('inherited')\nclass Inherited(Base):\n    pass\n\n"
                              "@register('computed')\nclass Computed:\n    family = 'te' + 'xt'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import pb_attr_pkg

    assert pb_attr_pkg.REG.declared_attribute("family") == {"own": "visual", "inherited": "text"}
    assert pb_attr_pkg.REG.declared_attribute("nothing") == {}
    assert "pb_attr_pkg.a" not in sys.modules
    monkeypatch.delitem(sys.modules, "pb_attr_pkg")


def test_method_families_read_from_the_sources_equal_the_loaded_classes():
    """The figures group methods by the family read from the sources (no torch); it must be each class's own."""
    from promptbench.methods.registry import METHODS, load_all
    from promptbench.report.results_meta import method_families

    loaded = {name: cls.family for name, cls in load_all().items()}
    assert METHODS.declared_attribute("family") == loaded
    assert method_families() == loaded
