"""The HTML report in a real browser: Debian's headless Chromium renders it (screenshot) and runs its script
(sorting by a column). Slow and needs `chromium` (apt-get install chromium); skipped without it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from promptbench.report.build import build
from tests.test_report import DATASETS, METHODS, acc, write

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=180)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_report_renders_and_sorts_in_headless_chromium(tmp_path: Path) -> None:
    for i, method in enumerate(METHODS[:6]):
        for dataset in DATASETS:
            for shots in (1, 4, 16):
                for seed in (1, 2):
                    write(tmp_path / "results", dataset, method, shots, seed,
                          {"test/acc": acc(i, dataset, shots, seed) - 0.01 * (shots == 4)})
    built = build(results=tmp_path / "results", out_dir=tmp_path / "t", overrides=[f"paths.output_dir={tmp_path}"])
    report = built.out_dir / "report.html"
    shot = tmp_path / "report.png"
    proc = chromium(tmp_path / "profile", "--window-size=1400,1800", f"--screenshot={shot}", report.as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    image = Image.open(shot).convert("L")
    assert image.size == (1400, 1800)
    assert len(image.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50     # text and figures, not a blank page

    # the script ran (body gets 'js-ready') and '#sort=3' sorts the first table by K=4, best first
    dom = chromium(tmp_path / "profile", "--dump-dom", report.as_uri() + "#sort=3").stdout
    assert re.search(r'<body[^>]*class="js-ready"', dom), dom[:500]
    table = dom[dom.index('<table class="sortable">'):dom.index("</table>")]
    values = [float(v) for v in re.findall(r"<tr><td[^>]*>[^<]*</td><td[^>]*>[^<]*</td><td[^>]*>[^<]*</td>"
                                           r"<td[^>]*>([\d.]+)", table)]
    assert len(values) > 10 and values == sorted(values, reverse=True)
    assert 'aria-sort="descending"' in table
