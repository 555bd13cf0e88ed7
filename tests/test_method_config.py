"""Typed method configs (``promptbench.methods.config``) and the method lifecycle hooks.

* ``conf/method/<name>.yaml`` and the method's config dataclass cannot disagree: every YAML key is declared, every
  literal value equals the dataclass default, and a key read from ``conf/fidelity`` is exactly the one the field's
  ``fidelity`` metadata names (its ``oc.select`` fallback being the ``fidelity=reference`` value);
* :func:`check_method_config` refuses unknown keys, mistyped values and values outside ``choices`` in one line,
  and ``engine.run`` calls it before anything is written;
* ``docs/method_keys.md`` is what ``scripts/method_keys.py`` writes now;
* ``on_train_start`` / ``on_train_epoch_end`` / ``on_train_end`` run where the Lightning module promises (a
  throw-away method in a tiny real training run).
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from promptbench.config import compose
from promptbench.core.registry import UnknownName
from promptbench.engine.results import ConfigValueError
from promptbench.methods import check_method_config, get_method, load_all, register, unregister
from promptbench.methods.config import config_fields
from promptbench.methods.coop import CoOp

REPO = Path(__file__).resolve().parents[1]
FIDELITY = re.compile(r"^\$\{oc\.select:fidelity\.([\w.]+),(.*)\}$")
METHODS = sorted(p.stem for p in (REPO / "conf" / "method").glob("*.yaml") if not p.stem.startswith("_"))


def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def same(a: Any, b: Any) -> bool:
    """Equal values, 1 and 1.0 alike (YAML ints in float fields), but never a bool for a number."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return isinstance(a, bool) == isinstance(b, bool) and a == b


@functools.cache
def reference_fidelity() -> dict[str, Any]:
    return flat(OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "fidelity" / "reference.yaml")))


def test_every_method_config_file_has_a_registered_method():
    assert set(METHODS) <= set(load_all())


@pytest.mark.parametrize("name", METHODS)
def test_yaml_and_dataclass_agree(name):
    cls = get_method(name).config_class
    composed = compose([f"method={name}", "~tuned"]).method  # fidelity=reference, no per-dataset settings
    raw = flat(OmegaConf.to_container(composed, resolve=False))
    resolved = flat(OmegaConf.to_container(composed, resolve=True))
    schema = OmegaConf.structured(cls)
    defaults_raw = flat(OmegaConf.to_container(schema, resolve=False))
    defaults = flat(OmegaConf.to_container(schema, resolve=True))
    meta = {key: f.metadata for key, _, f in config_fields(cls)}
    for key, value in raw.items():
        where = f"conf/method/{name}.yaml {key}"
        if key == "name":  # the registry name (MISSING in the dataclass)
            assert value == name, where
            continue
        assert key in defaults, f"{where}: not declared in {cls.__name__}"
        reads = FIDELITY.match(value) if isinstance(value, str) else None
        declared = meta[key].get("fidelity")
        if reads:
            assert declared == reads.group(1), f"{where} reads fidelity.{reads.group(1)}; {cls.__name__}: {declared}"
            fallback = OmegaConf.to_container(OmegaConf.create(f"v: {reads.group(2)}"))["v"]
            assert same(fallback, reference_fidelity()[declared]), f"{where}: fallback is not the reference value"
        elif isinstance(value, str) and "${" in value:  # another key's value (clip_svd: optim.t_max = epochs)
            assert same(resolved[key], defaults[key]), f"{where}={resolved[key]!r}, {cls.__name__}: {defaults[key]!r}"
        else:
            assert declared is None, f"{where}: {cls.__name__} reads fidelity.{declared}, the YAML sets {value!r}"
            assert same(value, defaults_raw[key]), f"{where}={value!r}, but {cls.__name__} says {defaults_raw[key]!r}"
    assert check_method_config(composed).name == name


def test_fidelity_presets_only_set_declared_keys():
    """Every conf/fidelity key is named by some method config field (no orphan quirk switch)."""
    named = {f.metadata["fidelity"] for m in load_all().values() for _, _, f in config_fields(m.config_class)
             if "fidelity" in f.metadata}
    orphans = set(reference_fidelity()) - named - {"biomed_dpt_b2n_class_position"}  # read by conf/tuned only
    assert not orphans


# -- one-line errors ---------------------------------------------------------------------------------------------


def _error(node, exc=ConfigValueError) -> str:
    with pytest.raises(exc) as err:
        check_method_config(node)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_unknown_key_names_the_key_method_and_close_matches():
    node = compose(["method=coop", "+method.n_ctxx=4"]).method
    message = _error(node)
    assert "method.n_ctxx" in message and "'coop'" in message and "did you mean n_ctx" in message
    nested = _error(compose(["method=coop", "+method.optim.lrr=1.0"]).method)
    assert "method.optim.lrr" in nested and "did you mean optim.lr" in nested


def test_mistyped_value_names_the_expected_type():
    message = _error(compose(["method=coop", "method.n_ctx=four"]).method)
    assert message.startswith("method.n_ctx='four' is not allowed") and "'coop'" in message
    assert "int or null" in message
    assert "float" in _error(compose(["method=kgcoop", "method.w=heavy"]).method)


def test_choices_and_unknown_methods():
    message = _error(compose(["method=coop", "method.class_token_position=sideways"]).method)
    assert "class_token_position" in message and "one of end, middle, front" in message
    unknown = _error(OmegaConf.create({"name": "cop"}), UnknownName)
    assert "unknown method 'cop'" in unknown and "did you mean coop" in unknown


def test_defaults_fill_a_partial_node_and_values_are_typed():
    typed = check_method_config(OmegaConf.create({"name": "clip_lora", "alpha": 2, "layers": [0, 1]}))
    assert typed.alpha == 2.0 and isinstance(typed.alpha, float) and typed.layers == [0, 1]
    assert typed.rank == 2 and typed.optim.name == "adamw" and typed.optim.betas == [0.9, 0.999]
    paper = check_method_config(compose(["method=prograd", "fidelity=paper", "~tuned"]).method)
    assert paper.teacher == "zeroshot" and paper.drop_last is False  # values read from conf/fidelity


def test_a_run_checks_the_method_config_before_building_anything(tmp_path, monkeypatch):
    import json

    from promptbench.engine import run as engine_run
    from promptbench.engine.results import result_path

    def no_backbone(cfg):
        raise AssertionError("the backbone was built before the method config was checked")

    monkeypatch.setattr(engine_run, "backbone_for", no_backbone)
    cfg = compose(["backbone=tiny_clip", "method=coop", "method.n_ctx=four", f"paths.output_dir={tmp_path}",
                   "logger=none"])
    with pytest.raises(ConfigValueError, match="method.n_ctx='four'"):
        engine_run.run(cfg)
    result = json.loads(result_path(cfg).read_text())  # recorded like any failed run, with the one-line error
    assert result["status"] == "failed" and "method.n_ctx='four'" in result["error"]


# -- generated docs ----------------------------------------------------------------------------------------------


def test_method_keys_page_is_current():
    spec = importlib.util.spec_from_file_location("method_keys", REPO / "scripts" / "method_keys.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    committed = (REPO / "docs" / "method_keys.md").read_text()
    assert script.render() == committed, "docs/method_keys.md is out of date: run python scripts/method_keys.py"
    for name in load_all():
        assert f"## {name}\n" in committed


# -- lifecycle hooks ---------------------------------------------------------------------------------------------


class _EpochHook(CoOp):
    """CoOp recording the lifecycle hooks it receives (a stand-in for PromptSRC-style prompt aggregation)."""

    calls: list[tuple[str, int | None]] = []

    def on_train_start(self) -> None:
        self.calls.append(("start", None))

    def on_train_epoch_end(self, epoch: int) -> None:
        self.calls.append(("epoch_end", epoch))

    def on_train_end(self) -> None:
        self.calls.append(("end", None))


def test_on_train_epoch_end_runs_once_per_epoch_in_a_real_run(tmp_path):
    from promptbench.engine.run import run

    register("toy_epoch_hook")(_EpochHook)
    _EpochHook.calls = []
    try:
        cfg = compose(["backbone=tiny_clip", "dataset=demo_btmri", "shots=2", "seed=1", "logger=none",
                       "method=coop", "method.epochs=3", "method.batch_size=4", "trainer.enable_progress_bar=false",
                       f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}"])
        cfg.method.name = "toy_epoch_hook"
        result = run(cfg)
    finally:
        unregister("toy_epoch_hook")
    assert result["status"] == "ok" and result["timing"]["epochs"] == 3
    assert _EpochHook.calls == [("start", None), ("epoch_end", 0), ("epoch_end", 1), ("epoch_end", 2), ("end", None)]
