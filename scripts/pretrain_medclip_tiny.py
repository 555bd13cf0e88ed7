#!/usr/bin/env python
"""Pretrain ``medclip_tiny``, promptbench's small default CLIP-style backbone.

What it builds
--------------
A BiomedCLIP-shaped open_clip ``CustomTextCLIP``, only much smaller:

* image tower: open_clip ``TimmModel`` around the stock timm architecture ``test_vit``
  (ViT, patch 16, width 64, depth 6, 2 heads, MLP ratio 3, class token, ``global_pool='token'``,
  ``dynamic_img_size=True``), ``timm_pool: ""`` (keep timm's CLS-token pooling, as BiomedCLIP does)
  and ``timm_proj: "linear"`` (64 -> 128). Images are 64 x 64 px, i.e. 4 x 4 = 16 patch tokens + CLS.
  NOTE: open_clip's ``TimmModel`` does NOT pass ``image_size`` to ``timm.create_model``; the trunk is
  built at timm's default 160 px (``pos_embed`` holds 1 + 10 x 10 positions) and, since ``test_vit``
  has ``dynamic_img_size=True``, the position embedding is resampled to the 4 x 4 grid on every
  forward pass. For the same reason the patch embedding returns NHWC tokens; ``trunk._pos_embed``
  flattens them to (B, 17, 64).
* text tower: open_clip ``HFTextEncoder`` around a randomly initialised HF ``BertModel``
  (hidden 128, 4 layers, 4 heads, intermediate 512, 64 positions), ``cls_last_hidden_state_pooler``,
  ``mlp`` projection (128 -> 128 -> 128), with its own small lower-cased WordPiece vocabulary: the
  special tokens, every ASCII letter/digit/punctuation mark plus its ``##`` form (so any ASCII text
  tokenises without ``[UNK]``), and whole words from the caption templates, class names and a list
  of common clinical/radiology words.
* ``embed_dim`` 128, learnable logit scale (init 1/0.07, clamped at 100 as in CLIP).

Data
----
Only the pretraining pools ``/work/shared/datasets/pretrain/{BTMRI,CTKidney,KneeXray}`` ("train" list
of each split file; 1507 + 1053 + 1273 grayscale 128 px images). They are disjoint from the
evaluation train/val/test splits in ``/work/shared/datasets/<NAME>``, which are never trained on.
Each image gets, every epoch, a caption drawn from several templates built from its class name,
modality and organ (e.g. "a brain MRI scan showing a glioma tumor", "an axial CT slice of a kidney
with a kidney stone", "a knee X-ray radiograph with moderate osteoarthritis", "an MRI image of
glioma tumor."). The zero-shot evaluation template (``EVAL_TEMPLATES``) is deliberately NOT one of
the training templates (asserted below), so the zero-shot numbers measure paraphrase transfer.

Objective
---------
Label-aware (soft-target) CLIP InfoNCE, i.e. the UniCL / supervised-contrastive form of the CLIP
loss: with only 13 classes, a batch of 128 images holds ~10 images per class, and captions of the
same class describe those images equally well. Standard CLIP InfoNCE would push an image away from
the (equally correct) captions of its same-class batch mates, a systematic false-negative signal.
So, within a batch, the texts are the unique captions of the batch, and the cross-entropy targets
for image i are uniform over all captions of i's class (and, symmetrically, for a caption over all
images of its class). Everything else is standard CLIP: L2-normalised features, a learnable
temperature, the mean of the image->text and text->image losses.

Optimisation: AdamW (lr 1e-3, betas (0.9, 0.98), eps 1e-6, weight decay 0.1 on >= 2-D weights
except embeddings, none on biases/norms/logit scale), linear warm-up then cosine decay, batch 128.
Augmentation (light): random resized crop, scale (0.5, 1), ratio (3/4, 4/3), bicubic to 64 px;
horizontal flip p=0.5 (left and right brains / kidneys / knees all occur in these data, so a flip
stays anatomically plausible); brightness and contrast jitter of +-10 %; grayscale -> RGB.

Determinism: a fixed seed drives every random choice (``torch.Generator``/``random.Random`` per
purpose, data order, crops, flips, captions, init), data loading is single-process,
``torch.use_deterministic_algorithms(True)`` is set and the intra-op thread count is fixed
(``--threads``, default 1: on a 2-core machine shared with other jobs, 2 OpenMP threads slowed down
up to 10x under contention, 1 thread only ~2x): the same seed + thread count gives a bit-identical weights file.

Usage::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
        .venv/bin/python scripts/pretrain_medclip_tiny.py --seed 0 --out assets/backbones/medclip_tiny
    .venv/bin/python scripts/pretrain_medclip_tiny.py --eval-only --out assets/backbones/medclip_tiny

Loading the result elsewhere: see ``load_medclip_tiny`` (``open_clip.add_model_config`` on a temp
copy of the config with absolute ``hf_model_name``/``hf_tokenizer_name`` + ``open_clip.create_model``
with ``pretrained=<weights>``; tokenizer: ``open_clip.tokenizer.HFTokenizer(folder, context_length=64)``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import string
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

MODEL_STEM = "medclip_tiny"
WEIGHTS_NAME = "open_clip_model.safetensors"
CONFIG_NAME = "open_clip_config.json"
IMAGE_SIZE = 64
CONTEXT_LENGTH = 64
EMBED_DIM = 128
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
EVAL_SHORT_SIDE = 112  # the vendored demo copy (data/demo) is downscaled to short side 112 px

DEFAULT_PRETRAIN_ROOT = Path("/work/shared/datasets/pretrain")
DEFAULT_EVAL_ROOT = Path("/work/shared/datasets")
DATASETS = ("BTMRI", "CTKidney", "KneeXray")

# modality, article for the modality, organ
META = {
    "BTMRI": {"modality": "MRI", "art": "an", "organ": "brain"},
    "CTKidney": {"modality": "CT", "art": "a", "organ": "kidney"},
    "KneeXray": {"modality": "X-ray", "art": "an", "organ": "knee"},
}

# One fixed zero-shot template per dataset, chosen before any evaluation was run.
# promptbench's dataset configs should carry the same strings.
EVAL_TEMPLATES = {
    "BTMRI": "an MRI image of a brain showing {}.",
    "CTKidney": "a CT image of a kidney showing {}.",
    "KneeXray": "an X-ray image of a knee showing {}.",
}

# Natural noun phrases per class (used by some caption templates; the others use the raw class name).
PHRASES = {
    "glioma tumor": ["a glioma tumor", "a glioma"],
    "meningioma tumor": ["a meningioma tumor", "a meningioma"],
    "pituitary tumor": ["a pituitary tumor", "a pituitary adenoma"],
    "normal brain": ["a normal brain", "no tumor"],
    "cyst kidney": ["a kidney cyst", "a renal cyst"],
    "kidney stone": ["a kidney stone", "a renal stone"],
    "kidney tumor": ["a kidney tumor", "a renal mass"],
    "normal kidney": ["a normal kidney", "no abnormality"],
    "healthy knee": ["a healthy knee", "no osteoarthritis"],
    "doubtful osteoarthritis": ["doubtful osteoarthritis", "Kellgren-Lawrence grade 1 osteoarthritis"],
    "minimal osteoarthritis": ["minimal osteoarthritis", "Kellgren-Lawrence grade 2 osteoarthritis"],
    "moderate osteoarthritis": ["moderate osteoarthritis", "Kellgren-Lawrence grade 3 osteoarthritis"],
    "severe osteoarthritis": ["severe osteoarthritis", "Kellgren-Lawrence grade 4 osteoarthritis"],
}

# Caption templates: {art} {mod} {organ} {cls} (raw class name) {phrase} (a natural noun phrase).
COMMON_TEMPLATES = [
    "{art} {mod} image of {cls}.",  # the generic "a {modality} image of {classname}" form
    "{art} {mod} image of {phrase}.",
    "{art} {mod} scan showing {phrase}.",
    "{art} {organ} {mod} scan showing {phrase}.",
    "a {organ} {mod} image with {cls}.",
    "{mod} of the {organ}: {cls}.",
    "{cls}",
    "{cls} on {organ} {mod}.",
    "a medical image of {phrase}.",
    "a radiology image of the {organ} with {phrase}.",
    "findings consistent with {cls} on {mod}.",
    "{organ} {mod}, diagnosis: {cls}.",
]
SPECIFIC_TEMPLATES = {
    "BTMRI": [
        "a brain MRI scan showing {phrase}.",
        "an axial T1-weighted MRI slice of the brain with {phrase}.",
        "a magnetic resonance image of the head showing {cls}.",
    ],
    "CTKidney": [
        "an axial CT slice of a kidney with {phrase}.",
        "an abdominal CT scan showing {phrase}.",
        "a computed tomography image of the kidney with {cls}.",
    ],
    "KneeXray": [
        "a knee X-ray radiograph with {cls}.",
        "a knee radiograph showing {phrase}.",
        "a plain radiograph of the knee joint with {cls}.",
    ],
}

CLINICAL_WORDS = """
a an the of with and or in on at by for from to as is are was were be been this that these those
no not without showing shows shown show seen visible present absent consistent suggestive suspicious
image images scan scans slice slices photo picture view views study exam examination radiograph
radiographs radiography radiology radiologic radiological medical clinical diagnosis diagnostic
findings finding impression evidence sign signs feature features appearance type kind class grade
stage severity level mri ct x ray xray magnetic resonance computed tomography ultrasound mammogram
mammography pet scintigraphy fluoroscopy angiography dermoscopy histopathology pathology microscopy
fundus oct endoscopy t1 t2 weighted flair contrast enhanced enhancement axial coronal sagittal plain
frontal lateral anteroposterior ap pa bilateral unilateral left right upper lower anterior posterior
medial proximal distal central peripheral brain head skull cerebral cerebrum cerebellum brainstem
ventricle ventricles pituitary gland sella hypothalamus meninges dura cortex lobe frontal temporal
parietal occipital kidney kidneys renal abdomen abdominal pelvis liver spleen pancreas bladder
ureter urinary adrenal bowel knee knees joint joints bone bones femur tibia fibula patella cartilage
meniscus ligament hip shoulder spine lumbar cervical thoracic chest lung lungs heart breast skin eye
retina colon stomach tissue cell cells organ organs body tumor tumors tumour mass masses lesion
lesions nodule nodules cyst cysts cystic stone stones calculus calculi kidneystone glioma gliomas
meningioma meningiomas pituitary adenoma adenomas neoplasm cancer carcinoma malignant benign
metastasis metastases edema hemorrhage infarct stroke necrosis calcification calcified
hydronephrosis obstruction osteoarthritis arthritis osteophyte osteophytes narrowing space
sclerosis subchondral deformity erosion effusion fracture degenerative degeneration kellgren
lawrence kl pneumonia normal healthy abnormal abnormality disease diseased benign unremarkable
doubtful minimal mild moderate severe advanced early late possible probable definite small large
enlarged tiny big round irregular solid dense bright dark hyperintense hypointense hyperdense
hypodense well defined ill margin border patient patients adult child male female human diagnosed
case cases presence absence grade grading score
""".split()


# ----------------------------------------------------------------------------------------------------
# Captions and vocabulary


def _fill(template: str, name: str, classname: str, phrase: str) -> str:
    m = META[name]
    return template.format(art=m["art"], mod=m["modality"], organ=m["organ"], cls=classname, phrase=phrase)


def class_captions(name: str, classname: str) -> list[str]:
    """All training captions of one class (deterministic order, no duplicates)."""
    out: list[str] = []
    for t in COMMON_TEMPLATES + SPECIFIC_TEMPLATES[name]:
        phrases = PHRASES[classname] if "{phrase}" in t else [PHRASES[classname][0]]
        for p in phrases:
            c = _fill(t, name, classname, p)
            if c not in out:
                out.append(c)
    return out


def eval_prompts(name: str, classnames: list[str]) -> list[str]:
    return [EVAL_TEMPLATES[name].format(c) for c in classnames]


def build_vocab(texts: list[str]) -> list[str]:
    """Special tokens, ASCII characters (+ ## forms), then whole words, deterministic order."""
    from transformers.models.bert.tokenization_bert import BasicTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab += chars + ["##" + c for c in chars]
    basic = BasicTokenizer(do_lower_case=True)
    words: set[str] = set(w.lower() for w in CLINICAL_WORDS)
    for t in texts:
        words.update(basic.tokenize(t))
    seen = set(vocab)
    for w in sorted(words):
        if w not in seen:
            vocab.append(w)
            seen.add(w)
    return vocab


# ----------------------------------------------------------------------------------------------------
# Model config, saving and loading


def model_cfg() -> dict:
    return {
        "embed_dim": EMBED_DIM,
        "vision_cfg": {
            "timm_model_name": "test_vit",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": IMAGE_SIZE,
        },
        "text_cfg": {
            "hf_model_name": ".",
            "hf_tokenizer_name": ".",
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": CONTEXT_LENGTH,
        },
    }


def preprocess_cfg() -> dict:
    return {
        "image_size": IMAGE_SIZE,
        "mean": OPENAI_MEAN,
        "std": OPENAI_STD,
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }


def write_text_assets(folder: Path, vocab: list[str]) -> None:
    """BERT config.json + tokenizer files (vocab.txt, tokenizer_config.json, special_tokens_map.json)."""
    from transformers import BertConfig, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True, model_max_length=CONTEXT_LENGTH)
    tok.save_pretrained(str(folder))
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=CONTEXT_LENGTH,
        type_vocab_size=2,
        pad_token_id=0,
    )
    cfg.save_pretrained(str(folder))
    with open(folder / CONFIG_NAME, "w") as f:
        json.dump({"model_cfg": model_cfg(), "preprocess_cfg": preprocess_cfg()}, f, indent=2)
        f.write("\n")


def load_medclip_tiny(folder: str | Path, weights: str | Path | None = None, with_weights: bool = True):
    """Build the open_clip model + HFTokenizer from ``folder`` without touching the network.

    The relative ``hf_model_name``/``hf_tokenizer_name`` ("." = the folder) are made absolute in a temp
    copy of ``model_cfg``, registered with ``open_clip.add_model_config`` under the name ``medclip_tiny``.
    Returns ``(model, tokenizer, preprocess_cfg)``; the model is in eval mode.
    """
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    folder = Path(folder).resolve()
    full = json.loads((folder / CONFIG_NAME).read_text())
    cfg = full["model_cfg"]
    for key in ("hf_model_name", "hf_tokenizer_name"):
        val = cfg["text_cfg"].get(key)
        if val is not None and not Path(val).is_absolute():
            cfg["text_cfg"][key] = str((folder / val).resolve())
    if weights is None and with_weights:
        weights = folder / WEIGHTS_NAME
    with tempfile.TemporaryDirectory() as tmp:
        cfg_file = Path(tmp) / f"{MODEL_STEM}.json"
        cfg_file.write_text(json.dumps(cfg))
        open_clip.add_model_config(cfg_file)
        model = open_clip.create_model(
            MODEL_STEM,
            pretrained=str(weights) if weights else None,
            pretrained_image=False,
            pretrained_text=False,
        )
    model.eval()
    tokenizer = HFTokenizer(str(folder), context_length=cfg["text_cfg"]["context_length"])
    return model, tokenizer, full.get("preprocess_cfg", {})


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------
# Data


def read_split(root: Path, name: str, split: str) -> list[tuple[str, int, str]]:
    items = json.loads((root / name / f"split_{name}.json").read_text())[split]
    return [(str(root / name / name / p), int(y), c) for p, y, c in items]


def classnames_of(root: Path, name: str) -> list[str]:
    """Class names in label order, from the split file (not re-sorted)."""
    split = json.loads((root / name / f"split_{name}.json").read_text())
    by_label: dict[int, str] = {}
    for items in split.values():
        for _, y, c in items:
            by_label.setdefault(int(y), c)
    return [by_label[i] for i in range(len(by_label))]


def _normalise(t: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(3, 1, 1)
    return (t - mean) / std


def _to_tensor_rgb(img: Image.Image) -> torch.Tensor:
    """PIL grayscale/RGB -> float RGB tensor (3, H, W) in [0, 1]."""
    img = img.convert("RGB")
    t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.size[1], img.size[0], 3)
    return t.permute(2, 0, 1).float().div_(255.0)


class TrainAugment:
    """Random resized crop (0.5-1, 3/4-4/3) + hflip + brightness/contrast jitter, own RNG."""

    def __init__(self, size: int, seed: int):
        self.size = size
        self.rng = random.Random(seed)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        w, h = img.size
        area = w * h
        rng = self.rng
        for _ in range(10):
            target = area * rng.uniform(0.5, 1.0)
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw = int(round(math.sqrt(target * ratio)))
            ch = int(round(math.sqrt(target / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                x0 = rng.randint(0, w - cw)
                y0 = rng.randint(0, h - ch)
                break
        else:
            cw, ch = min(w, h), min(w, h)
            x0, y0 = (w - cw) // 2, (h - ch) // 2
        img = img.resize((self.size, self.size), Image.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
        flip = rng.random() < 0.5
        b = rng.uniform(0.9, 1.1)
        c = rng.uniform(0.9, 1.1)
        t = _to_tensor_rgb(img)
        if flip:
            t = t.flip(-1)
        t = ((t - t.mean()) * c + t.mean()) * b
        return _normalise(t.clamp_(0.0, 1.0))


def eval_transform(size: int):
    """Same as open_clip's eval preprocessing: resize shortest side (bicubic) + center crop + normalise."""
    import open_clip

    return open_clip.image_transform(
        size, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD, interpolation="bicubic", resize_mode="shortest"
    )


def load_eval_image(path: str, short_side: int = EVAL_SHORT_SIDE) -> Image.Image:
    """Evaluation images as the demo copy holds them: short side downscaled to 112 px."""
    img = Image.open(path)
    img.load()
    w, h = img.size
    s = short_side / min(w, h)
    if s < 1:
        img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
    return img


# ----------------------------------------------------------------------------------------------------
# Zero-shot evaluation


@torch.no_grad()
def evaluate_zero_shot(
    model,
    tokenizer,
    eval_root: Path = DEFAULT_EVAL_ROOT,
    splits: tuple[str, ...] = ("val", "test"),
    image_size: int = IMAGE_SIZE,
    batch_size: int = 200,
) -> dict:
    """Zero-shot top-1 accuracy per dataset and split, with the fixed ``EVAL_TEMPLATES`` prompts."""
    was_training = model.training
    model.eval()
    tf = eval_transform(image_size)
    results: dict = {}
    for name in DATASETS:
        classnames = classnames_of(eval_root, name)
        text = tokenizer(eval_prompts(name, classnames))
        tfeat = F.normalize(model.encode_text(text), dim=-1)
        res = {"chance": 1.0 / len(classnames), "template": EVAL_TEMPLATES[name]}
        for split in splits:
            items = read_split(eval_root, name, split)
            correct = 0
            per_class = [[0, 0] for _ in classnames]
            for i in range(0, len(items), batch_size):
                chunk = items[i : i + batch_size]
                x = torch.stack([tf(load_eval_image(p)) for p, _, _ in chunk])
                ifeat = F.normalize(model.encode_image(x), dim=-1)
                pred = (ifeat @ tfeat.T).argmax(-1)
                for (_, y, _), p in zip(chunk, pred.tolist()):
                    correct += int(p == y)
                    per_class[y][0] += int(p == y)
                    per_class[y][1] += 1
            res[split] = correct / len(items)
            res[f"{split}_n"] = len(items)
            res[f"{split}_per_class"] = {c: (k / n if n else float("nan")) for c, (k, n) in zip(classnames, per_class)}
        results[name] = res
    model.train(was_training)
    return results


def format_results(results: dict) -> str:
    lines = ["| dataset | template | chance | val acc | test acc |", "|---|---|---|---|---|"]
    for name, r in results.items():
        val = f"{100 * r['val']:.1f}% (n={r['val_n']})" if "val" in r else "-"
        test = f"{100 * r['test']:.1f}% (n={r['test_n']})" if "test" in r else "-"
        lines.append(f"| {name} | `{r['template']}` | {100 * r['chance']:.1f}% | {val} | {test} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Training


def label_aware_clip_loss(img_f, txt_f, img_cls, txt_cls, logit_scale):
    """Soft-target (UniCL-style) CLIP InfoNCE: every same-class caption/image is a positive."""
    logits = logit_scale * img_f @ txt_f.T  # (B, U)
    pos = (img_cls[:, None] == txt_cls[None, :]).float()
    t_i2t = pos / pos.sum(1, keepdim=True)
    t_t2i = pos.T / pos.T.sum(1, keepdim=True)
    loss_i = -(t_i2t * logits.log_softmax(1)).sum(1).mean()
    loss_t = -(t_t2i * logits.T.log_softmax(1)).sum(1).mean()
    return 0.5 * (loss_i + loss_t)


def param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "embeddings" in n or "pos_embed" in n or "cls_token" in n or "logit_scale" in n:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(args) -> dict:
    from safetensors.torch import save_file

    t_start = time.time()
    load_start = os.getloadavg()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    try:
        torch.use_deterministic_algorithms(True)
    except Exception as e:  # pragma: no cover
        print(f"warning: deterministic algorithms unavailable: {e}")

    out = Path(args.out)
    pre_root = Path(args.pretrain_root)

    # --- data: images kept in memory as PIL (128 px grayscale), captions per class
    images, labels, cls_names = [], [], []
    global_names: list[tuple[str, str]] = []  # global class id -> (dataset, classname)
    captions: dict[int, list[str]] = {}
    for name in DATASETS:
        cn = classnames_of(pre_root, name)
        offset = len(global_names)
        for c in cn:
            captions[len(global_names)] = class_captions(name, c)
            global_names.append((name, c))
        for p, y, _ in read_split(pre_root, name, "train"):
            img = Image.open(p)
            img.load()
            images.append(img.convert("L"))
            labels.append(offset + y)
        cls_names += cn
    n = len(images)
    all_captions = [c for cs in captions.values() for c in cs]
    eval_texts = [t for name in DATASETS for t in eval_prompts(name, classnames_of(Path(args.eval_root), name))]
    overlap = set(all_captions) & set(eval_texts)
    assert not overlap, f"evaluation prompts must not be training captions: {overlap}"
    print(f"pretraining images: {n}, classes: {len(global_names)}, distinct captions: {len(all_captions)}")

    # --- staging folder (written atomically into --out at the end)
    stage = Path(tempfile.mkdtemp(prefix="medclip_tiny_"))
    vocab = build_vocab(all_captions + eval_texts)
    write_text_assets(stage, vocab)
    model, tokenizer, _ = load_medclip_tiny(stage, with_weights=False)
    model.train()
    n_vis = sum(p.numel() for p in model.visual.parameters())
    n_txt = sum(p.numel() for p in model.text.parameters())
    n_all = sum(p.numel() for p in model.parameters())
    print(f"vocab {len(vocab)}; params: image {n_vis:,}, text {n_txt:,}, total {n_all:,}")

    # caption token cache (trailing [PAD]s are trimmed per batch: exact, CLS pooling + absolute positions)
    tok_cache = {c: tokenizer([c])[0] for c in all_captions}
    for c, ids in tok_cache.items():
        assert (ids != 1).all(), f"[UNK] in caption {c!r}"

    steps_per_epoch = n // args.batch_size  # drop last
    total = steps_per_epoch * args.epochs
    warmup = max(1, int(args.warmup_frac * total))
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        prog = (step - warmup) / max(1, total - warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * prog))

    order_gen = torch.Generator().manual_seed(args.seed + 1)
    aug = TrainAugment(IMAGE_SIZE, args.seed + 2)
    cap_rng = random.Random(args.seed + 3)
    labels_t = torch.tensor(labels)
    history = []
    step = 0
    for epoch in range(args.epochs):
        perm = torch.randperm(n, generator=order_gen).tolist()
        t_ep = time.time()
        run_loss = 0.0
        for b in range(steps_per_epoch):
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            x = torch.stack([aug(images[i]) for i in idx])
            y = labels_t[idx]
            # per batch, each class present gets `caps_per_class` captions; its images draw from those
            # (keeps the number of distinct texts per batch, and so the text-tower cost, bounded)
            pool = {
                c: cap_rng.sample(captions[c], min(args.caps_per_class, len(captions[c])))
                for c in sorted({labels[i] for i in idx})
            }
            caps = [cap_rng.choice(pool[labels[i]]) for i in idx]
            uniq = sorted(set(caps))
            txt_cls = torch.tensor([next(labels[i] for i, c in zip(idx, caps) if c == u) for u in uniq])
            ids = torch.stack([tok_cache[u] for u in uniq])
            ids = ids[:, : int((ids != 0).sum(1).max())]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            img_f = F.normalize(model.encode_image(x), dim=-1)
            txt_f = F.normalize(model.encode_text(ids), dim=-1)
            loss = label_aware_clip_loss(img_f, txt_f, y, txt_cls, model.logit_scale.exp())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            run_loss += loss.item()
            step += 1
        rec = {
            "epoch": epoch + 1,
            "loss": run_loss / steps_per_epoch,
            "logit_scale": model.logit_scale.exp().item(),
            "sec": time.time() - t_ep,
        }
        if args.val_every and ((epoch + 1) % args.val_every == 0 or epoch + 1 == args.epochs):
            r = evaluate_zero_shot(model, tokenizer, Path(args.eval_root), splits=("val",))
            rec["val"] = {k: round(v["val"], 4) for k, v in r.items()}
            model.train()
        history.append(rec)
        print(json.dumps(rec), flush=True)

    model.eval()
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(stage / WEIGHTS_NAME), metadata={"format": "pt"})
    train_sec = time.time() - t_start

    # --- reload strictly from the staged folder and evaluate
    model2, tok2, _ = load_medclip_tiny(stage)
    results = evaluate_zero_shot(model2, tok2, Path(args.eval_root), splits=tuple(args.eval_splits))
    print(format_results(results))
    wall = time.time() - t_start

    out.mkdir(parents=True, exist_ok=True)
    for f in stage.iterdir():
        shutil.copyfile(f, out / f.name)
        os.chmod(out / f.name, 0o644)
    shutil.rmtree(stage)
    digest = sha256_of(out / WEIGHTS_NAME)
    (out / "SHA256SUMS").write_text(f"{digest}  {WEIGHTS_NAME}\n")
    info = {
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "steps": total,
        "train_seconds": round(train_sec, 1),
        "wall_seconds_incl_eval": round(wall, 1),
        "loadavg_start": [round(v, 2) for v in load_start],
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "epoch_seconds": [round(h["sec"], 1) for h in history],
        "params": {"image": n_vis, "text": n_txt, "total": n_all},
        "vocab_size": len(vocab),
        "sha256": digest,
        "history": history,
        "zero_shot": results,
    }
    write_readme(out, info)
    return info


def write_readme(out: Path, info: dict) -> None:
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file() and f.name != "README.md")
    p = info["params"]
    ls = info["history"][-1]["logit_scale"] if info["history"] else float("nan")
    ep_s = info["epoch_seconds"] or [float("nan")]
    text = f"""# medclip_tiny: promptbench's small default backbone

A tiny CLIP-style medical vision-language model with the same tower kinds as BiomedCLIP, trained from
scratch by `scripts/pretrain_medclip_tiny.py` so that the project's tests and demo run on a CPU without
downloading anything. It is a toy for fast, reproducible pipeline runs, not a useful medical model.

Load it with open_clip's `local-dir:` schema after resolving the relative `hf_model_name` /
`hf_tokenizer_name` (`"."` = this folder), e.g. with `load_medclip_tiny()` in the script; tokenizer:
`open_clip.tokenizer.HFTokenizer(<this folder>, context_length=64)`. Preprocessing: 64 px, resize
shortest side (bicubic) + center crop, OpenAI CLIP mean/std; grayscale images are converted to RGB.

## Architecture (open_clip `CustomTextCLIP`, embed_dim {EMBED_DIM})

- Image tower: open_clip `TimmModel` on the stock timm arch `test_vit` (ViT, patch 16, width 64,
  depth 6, 2 heads, MLP ratio 3, class token, token pooling, `dynamic_img_size=True`), `timm_pool: ""`,
  `timm_proj: "linear"` (64 -> {EMBED_DIM}); input {IMAGE_SIZE} x {IMAGE_SIZE} px = 16 patch tokens + CLS.
  open_clip does not pass `image_size` to timm, so the trunk is built at timm's default 160 px
  (`pos_embed` holds 1 + 10 x 10 positions) and resamples the position grid to 4 x 4 on each forward
  pass; `patch_embed` returns NHWC tokens, `trunk._pos_embed` flattens them to (B, 17, 64).
  {p["image"]:,} parameters.
- Text tower: open_clip `HFTextEncoder` on a HF `BertModel` (`config.json`: hidden 128, 4 layers,
  4 heads, intermediate 512, 64 positions, dropout 0.1), `cls_last_hidden_state_pooler`, `mlp`
  projection; own lower-cased WordPiece vocabulary of {info["vocab_size"]} entries (special tokens,
  every ASCII letter/digit/punctuation mark and its `##` form, whole words from the caption templates,
  class names and common clinical words), context length 64. {p["text"]:,} parameters.
- Logit scale: learned, {ls:.2f} at the end of training. Total: {p["total"]:,} parameters.

## Training

- Data: only the pretraining pools `/work/shared/datasets/pretrain/{{BTMRI,CTKidney,KneeXray}}`
  (1507 + 1053 + 1273 grayscale 128 px images, 13 classes); they are disjoint (no near-duplicates)
  from the evaluation train/val/test splits, which were not trained on.
- Captions: per image and epoch, one of {len(COMMON_TEMPLATES) + 3} templates (plus phrase variants) built
  from class name, modality and organ, e.g. "a brain MRI scan showing a glioma tumor", "an axial CT slice
  of a kidney with a kidney stone", "a knee X-ray radiograph with moderate osteoarthritis".
- Objective: label-aware (soft-target, UniCL-style) CLIP InfoNCE with a learnable temperature: the
  captions of the batch's classes are the texts and all same-class pairs are positives, since with 13
  classes many images in a batch share a correct caption. AdamW (lr {info["lr"]}, wd 0.1), warm-up +
  cosine, batch {info["batch_size"]}, {info["epochs"]} epochs ({info["steps"]} steps); random resized crop (0.5-1),
  horizontal flip, +-10 % brightness/contrast.
- Command (seed {info["seed"]}, {info["threads"]} intra-op thread(s), deterministic algorithms on):

      HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \\
          .venv/bin/python scripts/pretrain_medclip_tiny.py --seed {info["seed"]} --out assets/backbones/medclip_tiny

- Wall time on the 2-core development machine: {info["train_seconds"]:.0f} s of training,
  {info["wall_seconds_incl_eval"]:.0f} s including the final evaluation. The machine was shared with other
  jobs (1/5/15-min load average {info["loadavg_start"]} at the start, {info["loadavg_end"]} at the end;
  seconds per epoch: min {min(ep_s)}, median {sorted(ep_s)[len(ep_s) // 2]}, max {max(ep_s)}).
- Weights: `{WEIGHTS_NAME}` (fp32), sha256 `{info["sha256"]}` (also in `SHA256SUMS`).
  Folder size without this README: {size / 1e6:.2f} MB.

## Zero-shot accuracy

Images resized to short side 112 px (like the vendored demo copy), then the eval transform above; one
fixed prompt template per dataset, chosen before evaluation and not among the training captions.
Val and test splits of `/work/shared/datasets/<NAME>`.

{format_results(info["zero_shot"])}

Reproduce: `.venv/bin/python scripts/pretrain_medclip_tiny.py --eval-only --out assets/backbones/medclip_tiny`.

## Data attribution

Terms of use are those of each original dataset:

- BTMRI: the Brain Tumor MRI dataset (M. Nickparvar, Kaggle), itself built from figshare, SARTAJ and
  Br35H; the BTMRI dataset of the BiomedCoOp benchmark comes from the same source.
- CTKidney: CT KIDNEY DATASET: Normal-Cyst-Tumor and Stone (Islam et al., Scientific Reports 2022).
- KneeXray: Knee Osteoarthritis Dataset with Severity Grading (P. Chen, Mendeley Data 2018, images
  from the Osteoarthritis Initiative), CLAHE-enhanced 224 px version.
"""
    (out / "README.md").write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="assets/backbones/medclip_tiny")
    ap.add_argument("--pretrain-root", default=str(DEFAULT_PRETRAIN_ROOT))
    ap.add_argument("--eval-root", default=str(DEFAULT_EVAL_ROOT))
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--warmup-frac", type=float, default=0.05)
    ap.add_argument("--caps-per-class", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (1 is robust on a shared 2-core box)")
    ap.add_argument("--val-every", type=int, default=0, help="log zero-shot val accuracy every N epochs")
    ap.add_argument("--eval-splits", nargs="+", default=["val", "test"])
    ap.add_argument("--eval-only", action="store_true", help="evaluate the model saved in --out")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.eval_only:
        model, tok, _ = load_medclip_tiny(args.out)
        results = evaluate_zero_shot(model, tok, Path(args.eval_root), splits=tuple(args.eval_splits))
        print(format_results(results))
        print(json.dumps(results, indent=1))
        return 0
    info = train(args)
    print(f"done: sha256 {info['sha256']}, train {info['train_seconds']} s, total {info['wall_seconds_incl_eval']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
