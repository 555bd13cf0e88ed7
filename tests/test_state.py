"""Saved trainable state (``state.safetensors``, promptbench/engine/state.py): every registered method round-trips to
identical logits through a fresh instance; states of another method, backbone or class list, tampered files and
pickles are refused in one line; a trained cell writes the file and its ``state`` block in result.json."""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest
import torch

from promptbench.backbones import build_backbone
from promptbench.engine.state import STATE_FILE, StateMismatch, load_state, save_state
from promptbench.methods import build_method
from tests import test_contract
from tests.conftest import BTMRI_CLASSES, tiny_backbone_cfg
from tests.test_contract import SupportSet, check_method_contract, grad_mode_for, method_cfg, registered_methods

pytestmark = pytest.mark.usefixtures("single_torch_thread")
dataset_node = test_contract.dataset_node  # the contract suite's dataset node (fixture)

#: token-tower families the round trip runs on (open_clip native, timm + HF BERT)
ROUND_TRIP_BACKBONES = ["tiny_clip", "tiny_biomedclip"]


@pytest.fixture(scope="module", params=ROUND_TRIP_BACKBONES)
def state_backbone(request):
    torch.manual_seed(0)
    return build_backbone(tiny_backbone_cfg(request.param))


def _reseed(method) -> None:
    """Test-time views (TPT) draw from the method's own generator: the same draws for both instances."""
    torch.manual_seed(0)
    for value in vars(method).values():
        if isinstance(value, torch.Generator):
            value.manual_seed(0)


def _logits(method, images):
    method.eval()
    _reseed(method)
    with grad_mode_for(method):
        return method(images).detach()


def _perturbed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g, dtype=v.dtype) if v.is_floating_point() and v.dim()
            else v for k, v in state.items()}


def check_state_round_trip(name: str, backbone, dataset, folder) -> dict[str, torch.Tensor]:
    """Prepared, trained (the contract suite's steps), perturbed, saved; a freshly built instance (other random
    init) loads the file and gives exactly the same logits. Only the method's own tensors are saved."""
    method = check_method_contract(name, backbone, dataset)
    method.set_classnames(BTMRI_CLASSES)
    state = method.trainable_state()
    if method.num_trainable() or method.trains:
        assert state, f"{name}: trainable parameters but an empty state"
    assert not any(k.startswith("backbone.") or ".tower." in k for k in state), sorted(state)[:3]
    frozen = {t.data_ptr() for t in backbone.state_dict().values() if t.numel()}
    assert not any(t.data_ptr() in frozen for t in method.trainable_state().values())
    if state:
        method.load_trainable_state(_perturbed(state))  # away from anything a fresh build reproduces
    images = SupportSet(seed=3).images[:6]
    expected = _logits(method, images)

    block = save_state(folder, method, backbone, BTMRI_CLASSES)
    if not state:
        assert block is None and not (folder / STATE_FILE).exists()
        return state
    data = (folder / STATE_FILE).read_bytes()
    assert block["sha256"] == hashlib.sha256(data).hexdigest() and block["bytes"] == len(data)
    assert block["method"] == name and block["backbone"] == backbone.info.name
    assert block["tensors"] == len(state) and block["classnames"] == BTMRI_CLASSES

    torch.manual_seed(1234)  # another initialisation: only the loaded state can make the logits equal
    fresh = build_method(method_cfg(name), backbone, BTMRI_CLASSES, dataset)
    load_state(folder / STATE_FILE, fresh, backbone, BTMRI_CLASSES, sha256=block["sha256"])
    got = _logits(fresh, images)
    assert torch.equal(got, expected), f"{name}: max |dlogits| {(got - expected).abs().max():.3g}"
    assert fresh.trainable_state().keys() == state.keys()
    return state


@pytest.mark.parametrize("name", registered_methods())
def test_saved_state_round_trips_to_identical_logits(state_backbone, dataset_node, tmp_path, name):
    """Every registered method (a new method file is covered) on both token-tower families."""
    check_state_round_trip(name, state_backbone, dataset_node, tmp_path)


class _ToyScaled(test_contract._ToyBias):
    """A new method holding an alias of a backbone tower and a fitted persistent buffer."""

    def __init__(self, backbone, classnames, cfg, dataset):
        super().__init__(backbone, classnames, cfg, dataset)
        self.tower = backbone.text  # reachable twice: under backbone.* and under tower.*
        self.register_buffer("class_scale", torch.ones(len(classnames)))

    def prepare(self, datamodule):
        self.class_scale.fill_(2.0)

    def forward(self, images):
        return super().forward(images) * self.class_scale[: len(self.classnames)]


def test_a_new_method_round_trips_and_saves_none_of_the_backbone(tiny_backbone, dataset_node, tmp_path):
    with test_contract.temporarily_registered("toy_scaled", _ToyScaled):
        state = check_state_round_trip("toy_scaled", tiny_backbone, dataset_node, tmp_path)
    assert sorted(state) == ["bias", "class_scale"]


# -- refusals ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_backbone():
    torch.manual_seed(0)
    return build_backbone(tiny_backbone_cfg("tiny_clip"))


@pytest.fixture()
def coop_state(clip_backbone, dataset_node, tmp_path):
    torch.manual_seed(0)
    method = build_method(method_cfg("coop"), clip_backbone, BTMRI_CLASSES, dataset_node)
    block = save_state(tmp_path, method, clip_backbone, BTMRI_CLASSES)
    return tmp_path / STATE_FILE, block


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_state_of_another_method_is_refused(clip_backbone, dataset_node, coop_state):
    path, block = coop_state
    other = build_method(method_cfg("cocoop"), clip_backbone, BTMRI_CLASSES, dataset_node)
    with pytest.raises(StateMismatch) as err:
        load_state(path, other, clip_backbone, BTMRI_CLASSES, sha256=block["sha256"])
    message = _one_line(err)
    assert "trained with method coop on backbone tiny_clip" in message and "not method cocoop" in message
    assert "method=coop" in message


def test_a_state_of_another_backbone_is_refused(dataset_node, coop_state):
    path, _ = coop_state
    torch.manual_seed(0)
    other_backbone = build_backbone(tiny_backbone_cfg("tiny_biomedclip"))
    other = build_method(method_cfg("coop"), other_backbone, BTMRI_CLASSES, dataset_node)
    with pytest.raises(StateMismatch) as err:
        load_state(path, other, other_backbone, BTMRI_CLASSES)
    assert "not backbone tiny_biomedclip" in _one_line(err) and "backbone=tiny_clip" in str(err.value)


def test_a_state_for_other_weights_is_refused(clip_backbone, dataset_node, coop_state, monkeypatch):
    """Same backbone name, other weights (another checkpoint file under the same config name)."""
    path, _ = coop_state
    method = build_method(method_cfg("coop"), clip_backbone, BTMRI_CLASSES, dataset_node)
    monkeypatch.setitem(clip_backbone.__dict__, "weights_sha256", "f" * 64)
    with pytest.raises(StateMismatch) as err:
        load_state(path, method, clip_backbone, BTMRI_CLASSES)
    assert "not backbone tiny_clip (weights ffffffffffff...)" in _one_line(err)


def test_other_class_names_are_refused_unless_allowed(clip_backbone, dataset_node, coop_state):
    path, _ = coop_state
    names = ["a", "b", "c", "d"]
    method = build_method(method_cfg("coop"), clip_backbone, names, dataset_node)
    with pytest.raises(StateMismatch) as err:
        load_state(path, method, clip_backbone, names)
    assert "allow_other_classes" in _one_line(err)
    load_state(path, method, clip_backbone, names, allow_other_classes=True)  # cross-dataset evaluation


def test_a_tampered_file_is_refused(clip_backbone, dataset_node, coop_state):
    path, block = coop_state
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of a tensor
    path.write_bytes(bytes(data))
    method = build_method(method_cfg("coop"), clip_backbone, BTMRI_CLASSES, dataset_node)
    with pytest.raises(StateMismatch) as err:
        load_state(path, method, clip_backbone, BTMRI_CLASSES, sha256=block["sha256"])
    assert "was changed or replaced" in _one_line(err)


def test_a_pickle_is_never_loaded(clip_backbone, dataset_node, tmp_path, monkeypatch):
    """A torch.save / pickle file under the state's name is refused without being unpickled."""
    path = tmp_path / STATE_FILE
    torch.save({"prompt_learner.ctx": torch.zeros(4, 64)}, path)
    calls = []
    monkeypatch.setattr(pickle, "load", lambda *a, **k: calls.append("pickle.load"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: calls.append("pickle.loads"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append("torch.load"))
    method = build_method(method_cfg("coop"), clip_backbone, BTMRI_CLASSES, dataset_node)
    with pytest.raises(StateMismatch) as err:
        load_state(path, method, clip_backbone, BTMRI_CLASSES)
    assert "not a safetensors file" in _one_line(err) and not calls


def test_a_missing_key_is_refused_in_one_line(clip_backbone, dataset_node):
    method = build_method(method_cfg("coop"), clip_backbone, BTMRI_CLASSES, dataset_node)
    state = method.trainable_state()
    with pytest.raises(ValueError) as err:
        method.load_trainable_state({**state, "extra": torch.zeros(1)})
    assert "unexpected key 'extra'" in _one_line(err)
    with pytest.raises(ValueError) as err:
        method.load_trainable_state({})
    assert "missing key 'prompt_learner.ctx'" in _one_line(err)


def test_zero_shot_writes_no_state(clip_backbone, dataset_node, tmp_path):
    method = build_method(method_cfg("zeroshot"), clip_backbone, BTMRI_CLASSES, dataset_node)
    assert save_state(tmp_path, method, clip_backbone, BTMRI_CLASSES) is None
    assert not (tmp_path / STATE_FILE).exists()


# -- end to end ----------------------------------------------------------------------------------------------------


def test_a_trained_cell_writes_its_state_beside_result_json(tmp_path):
    from promptbench.config import compose
    from promptbench.engine.results import result_path
    from promptbench.engine.run import backbone_for, run

    cfg = compose(["backbone=tiny_clip", "method=coop", "dataset=demo_btmri", "method.epochs=1", "logger=none",
                   "trainer.enable_progress_bar=false", "shots=1", "seed=0", f"paths.output_dir={tmp_path}"])
    run(cfg)
    path = result_path(cfg)
    result = json.loads(path.read_text())
    block = result["state"]
    file = path.parent / block["file"]
    assert file.is_file() and block["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert block["method"] == "coop" and block["backbone"] == "tiny_clip" and block["tensors"] == 1
    assert block["numel"] == result["params"]["trainable"]
    assert block["classnames"] == [str(c) for c in result["config"]["dataset"]["classnames"]]
    backbone = backbone_for(cfg)
    fresh = build_method(cfg.method, backbone, block["classnames"], cfg.dataset)
    load_state(file, fresh, backbone, block["classnames"], sha256=block["sha256"])
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
