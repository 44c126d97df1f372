"""The headline summary: one row per claim of the two papers -- the paper's number, ours at the current
scale, the verdict and why -- computed only from the DAG's tidy CSVs under ``results/<scale>/``.

    python -m experiments.summary --scale tiny        # prints the table, writes figures/tiny/summary.{csv,md}

Every verdict is a test that could have failed. Each claim's rule (``experiments.summary.p1`` and
``.p2``) states in its docstring the effect, its baseline (the value if the phenomenon were absent),
the 95 % interval (t over seeds, bootstrap or Wilson, as named) and the decision, fixed before the
run. The vocabulary (``experiments.summary.intervals``):

* ``yes``: the interval excludes the baseline in the paper's direction;
* ``partly``: a named part shows and a named part does not (the ``why`` column says which);
* ``no``: the interval excludes the effect the claim needs, or shows the opposite;
* ``inconclusive``: the interval covers both; ``why`` gives the smallest effect the design resolves,
  or why there is no interval (one seed, all values equal);
* ``not testable``: a precondition failed (``why`` names it, with its number);
* ``sanity check: holds`` / ``sanity check: violated``: a bound or identity that holds for any model;
* ``not run``: the branch's CSVs do not exist at this scale.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from experiments.common.cli import UserError, main_guard
from experiments.common.io import write_table, write_text
from experiments.common.provenance import SUITE_TABLES, current_record, sibling_sidecars, stamp
from experiments.summary import p1, p2
from experiments.summary.intervals import NOT_RUN, VERDICTS

Rule = Callable[..., tuple[str, str, str]]

CLAIMS: list[tuple[str, str, str, Rule]] = [
    ("P1 Thm 1", "the expected gradient of an input is bounded by its reward std", "every input within the bound",
     p1.theorem1_bound),
    ("P1 Thm 1", "the gradient vanishes as the reward std → 0", "vanishes with the std (Theorem 1)",
     p1.theorem1_vanishing),
    ("P1 §4.3", "RFT needs Ω(1/σ²) steps, SFT O(log 1/σ)", "slope −2 / constant per decade", p1.separation),
    ("P1 §4.2", "SFT fits small-std inputs that RFT cannot move", "qualitative (MNIST, CIFAR10, STS-B)",
     p1.controlled),
    ("P1 Finding I", "many GRUE inputs have a small reward std, mostly low-reward ones",
     "qualitative (Fig. 1): 3 of 7 datasets, IMDB few", p1.finding1),
    ("P1 Finding II", "RFT gains little on small-std inputs", "qualitative (Table 1; values not retrievable)",
     p1.finding2),
    ("P1 Finding III", "SFT, and SFT before RFT, beat RFT alone", "qualitative (Table 1)", p1.finding3),
    ("P1 §5.1", "lr, temperature and entropy heuristics do not fix it",
     "NarrativeQA ≈ 0.10 vs SFT→RFT 0.54 (Table 2)", p1.heuristics),
    ("P1 §5.2", "SFT on 1 % of inputs for 40 % of the steps is enough", "≈ 96 % of full SFT→RFT (Fig. 4)",
     p1.cheap_sft),
    ("P2 §3", "π(y+) falls during DPO on one prompt (likelihood displacement)",
     "decrease 0.21–0.96 after SFT (Table 1)", p2.persona),
    ("P2 §5", "a higher CHES quantile gives more displacement; other measures do not",
     "monotone in CHES (Fig. 2)", p2.ches),
    ("P2 §6", "DPO on on-policy refusal pairs lowers refusals",
     "Gemma-2B-IT 80.5 % → 54.8 %, Llama-3-8B-Instruct 74.4 % → 33.4 % (§6, Table 16)", p2.refusal_dpo),
    ("P2 §6", "DPO on two-refusal pairs only still lowers refusals", "stated, no number (§6)", p2.refusal_rr),
    ("P2 §6", "filtering out high-CHES pairs keeps the refusals", "above the initial rate (Fig. 3, bars only)",
     p2.refusal_ches),
]

MEANING = {
    "yes": "the 95 % interval excludes the baseline (no phenomenon) in the paper's direction",
    "partly": "a named part shows and a named part does not",
    "no": "the interval excludes the effect the claim needs, or shows the opposite",
    "inconclusive": "the interval covers both (or there is none: one seed, all values equal)",
    "not testable": "a precondition failed (named, with its number)",
    "sanity check: holds": "a bound or identity that holds for any model; checked, not evidence",
    "not run": "the branch's results do not exist at this scale",
}


def summary_table(results: Path, scale: str, threshold: float = 0.05) -> pd.DataFrame:
    rows = []
    for where, claim, paper, rule in CLAIMS:
        try:
            ours, verdict, why = rule(results, threshold=threshold)
        except FileNotFoundError as e:
            ours, verdict, why = f"missing {Path(e.filename).name if e.filename else e}", NOT_RUN, "run the DAG first"
        if verdict not in VERDICTS:
            raise AssertionError(f"{rule.__name__} returned {verdict!r}")
        rows.append({"paper": where, "claim": claim, "paper's number": paper, f"ours ({scale})": ours,
                     "verdict": verdict, "why": why})
    return pd.DataFrame(rows)


def readme_block(readme: str, scale: str) -> str:
    """The text between ``<!-- summary:<scale> -->`` and ``<!-- /summary:<scale> -->`` in a README."""
    start, end = f"<!-- summary:{scale} -->\n", f"<!-- /summary:{scale} -->"
    if start not in readme or end not in readme:
        raise UserError(f"the README has no {start.strip()} … {end} block")
    return readme.split(start, 1)[1].split(end, 1)[0]


def sync_readme(path: Path, table_md: str, scale: str) -> None:
    """Replace the README's summary block with ``table_md`` (the summary's Markdown table)."""
    text = path.read_text(encoding="utf-8")
    old = readme_block(text, scale)
    start = f"<!-- summary:{scale} -->\n"
    text = text.replace(start + old, start + table_md.rstrip("\n") + "\n", 1)
    write_text(path, text)


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description="one row per claim of the two papers: theirs, ours, and the verdict")
    p.add_argument("--scale", required=True)
    p.add_argument("--results", default=None, help="default results/<scale>")
    p.add_argument("--small-std-threshold", type=float, default=0.05, help="rft.small_std_threshold")
    p.add_argument("--out", default=None, help="output prefix (default figures/<scale>/summary -> .csv and .md)")
    p.add_argument("--readme", default=None, help="also rewrite this README's <!-- summary:<scale> --> block")
    args = p.parse_args(argv)
    results = Path(args.results or f"results/{args.scale}")
    table = summary_table(results, args.scale, args.small_std_threshold)
    prefix = Path(args.out or f"figures/{args.scale}/summary")
    write_table(table, prefix)
    # the precision and machines of its runs: those the other figures of the scale record in their sidecars
    stamp([prefix], current_record(args.scale, sibling_sidecars(prefix.parent, skip=SUITE_TABLES)))
    if args.readme:
        sync_readme(Path(args.readme), Path(f"{prefix}.md").read_text(encoding="utf-8"), args.scale)
    print(table.to_markdown(index=False))
    return table
