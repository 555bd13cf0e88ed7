"""``promptbench audit dataset=<name> [overrides]``: near-duplicate images across train / val / test (and,
optionally, a folder of pretraining images).

Method: a DCT perceptual hash of every image (``imagehash.phash`` with ``hash_size=16``: 256 bits of the
low-frequency DCT signs of a 64 x 64 grayscale copy); two images are near-duplicates when their hashes differ in at
most ``threshold`` bits (default 8 of 256, about 3%); near-duplicate groups are the connected components of that
relation (``scipy.sparse.csgraph``). A group that holds images of more than one split (or of a split and the
pretraining folder) is leakage. Threshold measured on CTKidney (docs/trust.md): neighbouring slices of one scan are
mostly within 8 bits, slices of different scans rarely are.

Writes ``<paths.output_dir>/audit/<dataset>/audit.json`` and ``audit.html`` (example pairs), prints a summary whose
``cross-split`` line gives the number of groups crossing splits, and exits 1 when it finds leakage (``--keep-going``:
exit 0). ``promptbench train`` reads that ``audit.json`` and, per ``audit.on_leak`` (warn | refuse | ignore), warns
about or refuses a dataset whose audited split (same split hash) leaks.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from promptbench.config import compose
from promptbench.data.readers import read_dataset

log = logging.getLogger("promptbench")

SPLITS = ("train", "val", "test")
PRETRAIN = "pretrain"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
HASH_SIZE, THRESHOLD = 16, 8
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint16)


def phash_bits(image: Image.Image, hash_size: int = HASH_SIZE) -> np.ndarray:
    """The image's perceptual hash as packed bytes (``hash_size**2 / 8`` uint8)."""
    import imagehash

    return np.packbits(imagehash.phash(image.convert("L"), hash_size=hash_size).hash.flatten())


def hamming_pairs(hashes: np.ndarray, threshold: int, chunk: int = 128) -> list[tuple[int, int, int]]:
    """Every (i, j, distance) with i < j and Hamming distance <= ``threshold`` between packed-bit rows."""
    pairs: list[tuple[int, int, int]] = []
    n = len(hashes)
    for start in range(0, n, chunk):
        block = hashes[start:start + chunk]
        dist = _POPCOUNT[block[:, None, :] ^ hashes[None, :, :]].sum(axis=-1)
        rows, cols = np.nonzero(dist <= threshold)
        for i, j in zip(rows.tolist(), cols.tolist()):
            if start + i < j:
                pairs.append((start + i, j, int(dist[i, j])))
    return pairs


def near_duplicate_groups(n: int, pairs: Sequence[tuple[int, int, int]]) -> list[list[int]]:
    """Connected components (size >= 2) of the near-duplicate relation, each sorted, largest first."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not pairs:
        return []
    i, j = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    graph = coo_matrix((np.ones(len(pairs)), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    members: dict[int, list[int]] = {}
    for idx, lab in enumerate(labels.tolist()):
        members.setdefault(lab, []).append(idx)
    groups = [sorted(m) for m in members.values() if len(m) > 1]
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def _pretrain_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"audit --pretrain: {folder} is not a folder")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def audit_items(items: Sequence[tuple[str, str]], load, threshold: int = THRESHOLD,
                hash_size: int = HASH_SIZE) -> dict[str, Any]:
    """Audit ``items`` = [(source, key)] where ``source`` is a split name or ``pretrain``; ``load(source, key)``
    returns a PIL image. Returns the report (without dataset identity)."""
    hashes = np.stack([phash_bits(load(src, key), hash_size) for src, key in items]) if items else \
        np.zeros((0, hash_size * hash_size // 8), np.uint8)
    pairs = hamming_pairs(hashes, threshold)
    dist = {(i, j): d for i, j, d in pairs}
    groups = near_duplicate_groups(len(items), pairs)
    sources = [src for src, _ in items]
    report_groups, cross, pretrain_overlap, kinds = [], 0, 0, Counter()
    for g in groups:
        in_group = sorted({sources[i] for i in g}, key=lambda s: (SPLITS + (PRETRAIN,)).index(s))
        splits_in = [s for s in in_group if s != PRETRAIN]
        crosses = len(splits_in) > 1
        touches_pretrain = PRETRAIN in in_group and bool(splits_in)
        cross += crosses
        pretrain_overlap += touches_pretrain
        if crosses:
            kinds["-".join(splits_in)] += 1
        # example pair: the closest pair in the group whose two images come from different sources
        example = min(((dist[(a, b)], a, b) for a in g for b in g if a < b and (a, b) in dist
                       and sources[a] != sources[b]), default=None)
        report_groups.append({
            "size": len(g), "sources": in_group, "cross_split": crosses, "pretrain": touches_pretrain,
            "members": [{"source": sources[i], "key": items[i][1]} for i in g],
            "example": None if example is None else {"distance": example[0], "a": {"source": sources[example[1]],
                                                     "key": items[example[1]][1]},
                                                     "b": {"source": sources[example[2]],
                                                           "key": items[example[2]][1]}},
        })
    counts = Counter(sources)
    return {
        "method": "phash", "hash_size": hash_size, "hash_bits": hash_size * hash_size, "threshold": threshold,
        "images": {s: counts.get(s, 0) for s in (*SPLITS, PRETRAIN) if counts.get(s, 0) or s in SPLITS},
        "near_duplicate_pairs": len(pairs), "groups": len(groups),
        "within_split_groups": sum(1 for g in report_groups if len(g["sources"]) == 1),
        "cross_split_groups": cross,
        "cross_split_images": sum(g["size"] for g in report_groups if g["cross_split"]),
        "cross_split_kinds": dict(kinds), "pretrain_overlap_groups": pretrain_overlap,
        "leaky_groups": [g for g in report_groups if g["cross_split"] or g["pretrain"]],
    }


def audit_dataset(dataset_cfg: Any, pretrain: Path | None = None, threshold: int = THRESHOLD,
                  hash_size: int = HASH_SIZE) -> tuple[dict[str, Any], Any]:
    """(report, splits) of a ``conf/dataset`` node, optionally against a folder of pretraining images."""

    splits = read_dataset(dataset_cfg)
    items = [(s, r.key) for s in SPLITS for r in splits.split(s)]
    extra = _pretrain_images(Path(pretrain)) if pretrain else []
    items += [(PRETRAIN, str(p)) for p in extra]

    def load(source: str, key: str) -> Image.Image:
        return Image.open(key).convert("RGB") if source == PRETRAIN else splits.load_image(key)

    report = audit_items(items, load, threshold, hash_size)
    report = {"dataset": str(dataset_cfg.get("name")), "split_hash": splits.split_hash,
              "pretrain_folder": str(pretrain) if pretrain else None, **report}
    report["leaky"] = bool(report["cross_split_groups"] or report["pretrain_overlap_groups"])
    return report, splits


def summary_lines(report: dict[str, Any]) -> list[str]:
    sizes = ", ".join(f"{s} {n}" for s, n in report["images"].items())
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(report["cross_split_kinds"].items())) or "none"
    lines = [
        f"audit {report['dataset']}: {sum(report['images'].values())} images ({sizes}); pHash "
        f"{report['hash_size']}x{report['hash_size']} ({report['hash_bits']} bits), near-duplicate = Hamming "
        f"distance <= {report['threshold']}",
        f"near-duplicate groups: {report['groups']} ({report['near_duplicate_pairs']} pairs); within one split: "
        f"{report['within_split_groups']}",
        f"cross-split groups: {report['cross_split_groups']} ({report['cross_split_images']} images; {kinds})",
    ]
    if report.get("pretrain_folder"):
        lines.append(f"pretrain-overlap groups: {report['pretrain_overlap_groups']} (against "
                     f"{report['pretrain_folder']})")
    lines.append("leakage found" if report["leaky"] else "no leakage found")
    return lines


def _thumb(image: Image.Image, size: int = 128) -> str:
    image = image.convert("RGB")
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def write_html(report: dict[str, Any], splits: Any, path: Path, max_examples: int = 24) -> Path:
    """An HTML page: the summary and, for up to ``max_examples`` leaky groups, the closest cross-source pair."""
    def load(member: dict[str, str]) -> Image.Image:
        key = member["key"]
        return Image.open(key) if member["source"] == PRETRAIN else splits.load_image(key)

    esc = html.escape
    rows = []
    for group in report["leaky_groups"][:max_examples]:
        ex = group["example"]
        if ex is None:
            continue
        cells = "".join(
            f"<td><img src='{_thumb(load(m))}'><br><b>{esc(m['source'])}</b> {esc(Path(m['key']).name)}</td>"
            for m in (ex["a"], ex["b"]))
        rows.append(f"<tr>{cells}<td>distance {ex['distance']}<br>group of {group['size']}: "
                    f"{esc(', '.join(group['sources']))}</td></tr>")
    body = "".join(f"<p>{esc(line)}</p>" for line in summary_lines(report))
    table = f"<table border=1 cellpadding=4>{''.join(rows)}</table>" if rows else "<p>No leaky groups.</p>"
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>audit {esc(report['dataset'])}"
                    f"</title></head><body><h1>Leakage audit: {esc(report['dataset'])}</h1>{body}"
                    f"<h2>Example pairs (closest pair of each leaky group)</h2>{table}</body></html>\n")
    return path


def audit_dir(cfg: Any) -> Path:
    return Path(str(cfg.paths.output_dir)) / "audit" / str(cfg.dataset.name)


def check_audit(cfg: Any, split_hash: str) -> dict[str, Any] | None:
    """Before a run: the saved audit of this dataset and split (None when there is none). ``audit.on_leak``:
    ``warn`` (default) logs a warning, ``refuse`` raises, ``ignore`` does nothing, when the audit found leakage."""
    policy = str((cfg.get("audit") or {}).get("on_leak", "warn"))
    if policy not in ("warn", "refuse", "ignore"):
        raise ValueError(f"audit.on_leak must be warn, refuse or ignore, got {policy!r}")
    path = audit_dir(cfg) / "audit.json"
    if policy == "ignore" or not path.is_file():
        return None
    report = json.loads(path.read_text())
    if report.get("split_hash") != split_hash:
        return None
    summary = {"path": str(path), "leaky": bool(report.get("leaky")),
               "cross_split_groups": report.get("cross_split_groups"),
               "pretrain_overlap_groups": report.get("pretrain_overlap_groups")}
    if summary["leaky"]:
        message = (f"dataset {cfg.dataset.name}: the leakage audit {path} found {summary['cross_split_groups']} "
                   f"cross-split near-duplicate group(s) and {summary['pretrain_overlap_groups']} pretrain overlap(s)")
        if policy == "refuse":
            raise RuntimeError(f"{message}; fix the split or set audit.on_leak=warn")
        log.warning("%s (audit.on_leak=refuse stops such runs)", message)
    return summary


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="promptbench audit",
        description="Near-duplicate images across train/val/test (perceptual hash). Extra arguments are Hydra "
                    "overrides, e.g. dataset=ctkidney paths.data_root=/data.")
    parser.add_argument("--threshold", type=int, default=THRESHOLD,
                        help=f"max Hamming distance of near-duplicates (default {THRESHOLD} of {HASH_SIZE ** 2} bits)")
    parser.add_argument("--hash-size", type=int, default=HASH_SIZE, help="pHash side (bits = side^2)")
    parser.add_argument("--pretrain", type=Path, help="also compare with the images under this folder")
    parser.add_argument("--out", type=Path, help="output folder (default <paths.output_dir>/audit/<dataset>)")
    parser.add_argument("--keep-going", action="store_true", help="exit 0 even when leakage is found")
    args, overrides = parser.parse_known_args(list(argv))
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")

    try:
        cfg = compose(list(overrides))
        report, splits = audit_dataset(cfg.dataset, args.pretrain, args.threshold, args.hash_size)
    except (FileNotFoundError, ValueError) as err:
        print(f"audit: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else audit_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(report, indent=1) + "\n")
    write_html(report, splits, out / "audit.html")
    for line in summary_lines(report):
        print(line)
    print(f"wrote {out / 'audit.json'} and {out / 'audit.html'}")
    return 1 if report["leaky"] and not args.keep_going else 0
