"""Regenerate the README's demo figures and numbers from one default ``mcdrop demo`` run.

Run from the repository root::

    python docs/make_readme_figure.py

It runs :func:`mcdrop.cli.demo.run` with its defaults (one torch thread), copies ``shift.png``,
``reliability.png`` and ``ood.png`` to ``docs/_static/demo_shift.png``,
``docs/_static/reliability_demo.png`` and ``docs/_static/demo_ood.png``, writes the printed
tables and summary, with the wall time of the run, to ``docs/_static/demo_summary.txt``, and
rewrites README.md's paragraph between the ``demo-numbers`` markers from that file
(:func:`readme_block`). ``tests/test_readme.py`` checks that README's paragraph is
``readme_block`` of the committed summary, so README quotes exactly what the demo printed, and
that the committed figures are the ones of that run (their digests end the summary).
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "docs" / "_static"
SUMMARY = STATIC / "demo_summary.txt"
FIGURES = {"shift": "demo_shift.png", "reliability": "reliability_demo.png", "ood": "demo_ood.png"}
BEGIN = (
    "<!-- demo-numbers: written by docs/make_readme_figure.py from docs/_static/demo_summary.txt;"
    " edit the script, not this paragraph -->"
)
END = "<!-- /demo-numbers -->"
COMPARISON = re.compile(
    r"^  (?P<kind>\w+), (?P<metric>NLL|ECE): (?P<a>.+?) (?P<direction>lower|higher) than "
    r"(?P<b>.+?) by (?P<diff>[\d.]+) ± (?P<spread>[\d.]+|nan) \(.+? lower in "
    r"(?P<wins>\d+)/(?P<n>\d+) seeds",
    flags=re.MULTILINE,
)


def tables(summary: str) -> dict[str, dict[str, dict[str, str]]]:
    """The printed tables by the first words of their title: row -> column -> number as printed."""
    found: dict[str, dict[str, dict[str, str]]] = {}
    for block in summary.split("\n\n"):
        lines = block.splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith("model ")), None)
        if start is None:
            continue
        title = " ".join(lines[:start]) or "in distribution"
        header = re.split(r"\s{2,}", lines[start].strip())
        rows = {}
        for line in lines[start + 2 :]:
            cells = re.split(r"\s{2,}", line.strip())
            rows[cells[0]] = dict(zip(header[1:], cells[1:], strict=True))
        found[title] = rows
    return found


def _table(summary: str, starts: str) -> dict[str, dict[str, str]]:
    (rows,) = [rows for title, rows in tables(summary).items() if title.startswith(starts)]
    return rows


def _comparison(summary: str, kind: str, better: str, worse: str) -> re.Match[str]:
    for match in COMPARISON.finditer(summary):
        if (match["kind"], match["metric"], match["a"], match["b"]) == (kind, "NLL", better, worse):
            return match
    raise ValueError(f"no NLL comparison of {better} and {worse} under {kind} in the summary")


def _lower(match: re.Match[str], *, whose: str) -> str:
    """``1.490 ± 0.086 lower than the plain network's (3/3 seeds)``."""
    return (
        f"{match['diff']} ± {match['spread']} {match['direction']} than {whose} "
        f"({match['a']} lower in {match['wins']}/{match['n']} seeds)"
    )


def readme_block(summary: str) -> str:
    """README's paragraph of what the demo measured: every number as the demo printed it."""
    header = summary.splitlines()[0]
    seconds = re.search(r": ([\d.]+) s wall time", header)
    torch_version = re.search(r"torch (\S+),", header)
    n_seeds = re.search(r"'seeds': (\d+)", header)
    if seconds is None or torch_version is None or n_seeds is None:
        raise ValueError(f"unexpected first line of the summary: {header!r}")
    ind = _table(summary, "in distribution")
    mc, det = ind["MC dropout"], ind["deterministic"]
    worse = float(mc["nll"]) > float(det["nll"])
    aurc = _table(summary, "AURC")
    ood = _table(summary, "OOD AUROC")
    best = max(
        ((m, s, v) for m, row in ood.items() for s, v in row.items() if v != "-"),
        key=lambda t: float(t[2]),
    )
    mis = _table(summary, "Misclassification AUROC")
    wrong = re.search(r"wrong predictions per seed: ([\d, ]+) of (\d+)", summary)
    verdicts = re.findall(r"^  (Under .+)$", summary, flags=re.MULTILINE)
    scaling = re.search(r"^  (Temperature scaling .+)$", summary, flags=re.MULTILINE)
    dirichlet = re.search(r"^  (Dirichlet calibration .+)$", summary, flags=re.MULTILINE)
    augrc = re.search(r"^  Rejecting by predictive entropy, (the lowest AUGRC .+)$", summary, re.M)
    if wrong is None or scaling is None or dirichlet is None or augrc is None:
        raise ValueError("the summary lacks a misclassification, scaling or AUGRC line")
    if len(verdicts) != 2:
        raise ValueError(f"expected two verdicts in the summary, found {len(verdicts)}")
    text = (
        f"What it measured (mean over {n_seeds[1]} seeds, default settings; the run took "
        f"{seconds[1]} s with torch {torch_version[1]}, and `python docs/make_readme_figure.py` "
        "writes this paragraph, the figures and `docs/_static/demo_summary.txt` from it): in "
        f"distribution MC dropout is {'*worse*' if worse else 'better'} than the plain network "
        f"(NLL {mc['nll']} vs {det['nll']}, ECE {mc['ece']} vs {det['ece']}"
        + (
            ": averaging over masks softens predictions that were already calibrated). "
            if worse
            else "). "
        )
        + "Averaged over the rotated test sets its NLL is "
        + _lower(
            _comparison(summary, "rotation", "MC dropout", "deterministic"),
            whose="the plain network's",
        )
        + ", and under pixel noise "
        + _lower(_comparison(summary, "noise", "MC dropout", "deterministic"), whose="it")
        + ". The deep ensemble's NLL is "
        + _lower(
            _comparison(summary, "rotation", "deep ensemble", "MC dropout"), whose="MC dropout's"
        )
        + " under rotation and "
        + _lower(_comparison(summary, "noise", "deep ensemble", "MC dropout"), whose="it")
        + f" under noise. {' '.join(verdicts)} {scaling[1]} {dirichlet[1]} Rejecting the most "
        f"uncertain images (by predictive entropy), the area under the risk–coverage curve is "
        f"{aurc['deep ensemble']['rotation 30']} for the ensemble and "
        f"{aurc['MC dropout']['rotation 30']} for MC dropout rotated by 30°, "
        f"{aurc['deep ensemble']['noise 0.45']} and {aurc['MC dropout']['noise 0.45']} under "
        f"noise 0.45 (lower is better); {augrc[1]} Detecting the unseen digits 8 and 9, the best score is "
        f"the {best[0]}'s {best[1]} (AUROC {best[2]}); MC dropout's entropy reaches "
        f"{ood['MC dropout']['entropy']} and its mutual information "
        f"{ood['MC dropout']['mutual information']}. Its entropy tells its own wrong predictions "
        f"from its right ones with AUROC {mis['MC dropout']['entropy']}, but that rests on "
        f"{wrong[1]} wrong predictions of {wrong[2]} per seed: `uncertainty_hist.png` gives "
        "the interval."
    )
    return "\n".join([BEGIN, textwrap.fill(text, width=96, break_on_hyphens=False), END])


def readme_with_block(readme: str, block: str) -> str:
    """``readme`` with its ``demo-numbers`` paragraph replaced by ``block``."""
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    return readme[:start] + block + readme[end:]


def main() -> None:
    import hashlib
    import platform
    import shutil
    import tempfile
    import time

    import torch

    import mcdrop
    from mcdrop.cli.demo import run

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = run(out=tmp, quiet=True)
        seconds = time.perf_counter() - started
        for name, target in FIGURES.items():
            shutil.copyfile(Path(tmp) / f"{name}.png", STATIC / target)
    settings = result.payload["settings"]
    header = (
        f"mcdrop demo with its defaults {settings}, mcdrop {mcdrop.__version__}, torch "
        f"{torch.__version__}, {platform.processor() or platform.machine()}: {seconds:.1f} s "
        "wall time including imports of the data set and figures\n\n"
    )
    digests = ", ".join(
        f"{target} {hashlib.sha256((STATIC / target).read_bytes()).hexdigest()[:16]}"
        for target in FIGURES.values()
    )
    summary = header + result.summary + f"\n\nFigures of this run (sha256): {digests}\n"
    SUMMARY.write_text(summary, encoding="utf-8")
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    readme.write_text(readme_with_block(text, readme_block(summary)), encoding="utf-8")
    print(summary)


if __name__ == "__main__":
    main()
