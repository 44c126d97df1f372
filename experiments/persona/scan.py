"""Theory-guided scan of single-token preference pairs: which (y+, y−) should displace π(y+)?

The setting of P2 §4.2.1 (Theorems 4–5): one prompt x, single-token responses, *unconstrained
features*. The logits are ``W h``: W ∈ R^{V×d} is the unembedding (row W_z for token z) and h ∈ R^d
the prompt's last hidden state (the input of the unembedding), a free parameter; π(z) = softmax(W h)_z.
The loss is L = ℓ(u), u = [ln π(y+) − ln π(y−)] − [ln π_ref(y+) − ln π_ref(y−)], ℓ convex and
decreasing (P2 §2.1). Derivation (W fixed, gradient flow on h):

* ∇_h ln π(z) = W_z − W̄, with W̄ = Σ_z π(z) W_z (the softmax's mean row);
* ∇_h L = ℓ′(u)·(∇_h ln π(y+) − ∇_h ln π(y−)) = ℓ′(u)·(W+ − W−) (the two W̄ cancel);
* dh/dt = −∇_h L, so for every token z

      d/dt ln π(z) = ⟨∇_h ln π(z), dh/dt⟩ = −ℓ′(u)·⟨W_z − W̄, W+ − W−⟩.                        (1)

  **Theorem 5** (where the mass goes): (1) is −ℓ′·[⟨W_z, W+ − W−⟩ + c] with c = −⟨W̄, W+ − W−⟩ the
  same for every z, so the tokens whose log-probability rises fastest are those with the largest
  ⟨W_z, W+ − W−⟩.
* For z = y+, writing W̄ = π(y+)W+ + π(y−)W− + Σ_{z∉{y+,y−}} π(z)W_z, the bracket of (1) is

      B = m − (1 − π(y+) + π(y−))·⟨W+, W−⟩ − Σ_{z∉{y+,y−}} π(z)·⟨W_z, W+ − W−⟩,
      m = (1 − π(y+))·‖W+‖² + π(y−)·‖W−‖² ≥ 0,                                                 (2)

  **Theorem 4**'s form (papers.md §2.2 quotes it with m ≥ 0 and does not define m; (2) is what the
  derivation gives). d/dt ln π(y+) = −ℓ′·B with −ℓ′ > 0: π(y+) starts to fall (displacement at
  t = 0) exactly when B < 0, and its rate is −ℓ′·B.
* At step 0 of DPO the policy is its reference, u = 0: DPO ℓ(u) = −ln σ(βu) gives −ℓ′(0) = β/2; IPO
  ℓ(u) = (u − 1/(2τ))² gives −ℓ′(0) = 1/τ (:func:`neg_loss_slope`).
* If the unembedding trains too (P2's unconstrained-features model trains it as well),
  ∇_{W_k} ln π(z) = (1[k = z] − π(k))·h and the flow of W adds −ℓ′·‖h‖²·(1[z = y+] − 1[z = y−] − π(y+)
  + π(y−)) to (1): for y+ the non-negative −ℓ′‖h‖²(1 − π(y+) + π(y−)) (it can only oppose
  displacement: ``bracket_w``), for every other z one constant, so Thm 5's ranking is unchanged.

Which tokens gain: the paper's tables list the tokens whose *probability* rose most, d/dt π(z) =
π(z)·d/dt ln π(z); we rank gainers by that (``predicted_gainers``) and keep Thm 5's log-rate
ranking, ⟨W_z, W+ − W−⟩, beside it.

The scan (``predict``): for every ordered pair of candidate answers, B at the state DPO starts from,
averaged over the prompts that the runs' seeds pick. The state is the post-SFT model's (h, W)
when one SFT model serves every pair (``sft.recipe: synonyms``). With one SFT per y+
(``sft.recipe: pair``) a real SFT per candidate y+ would cost tens of SFT runs, so the scan models
that SFT in the same setting: from the prepared model's h, gradient flow on −ln π(y+) in h (W fixed)
up to the first iterate where π(y+) reaches the SFT's stopping target (:func:`simulate_sft`). The
DPO runs of the chosen pairs recompute B from their real post-SFT model (``dpo.py``), and that is
what the report plots against the observed fall. Selection rule, fixed before any run (``select_pairs``):

1. eligible: y+ has a meaning mapped to a prompt class (``class_of_meaning``), y+ and y− are not the
   same word (case and leading space aside), and the modelled SFT reached its target on every prompt;
2. predicted displacing: mean rate < 0, most negative first; predicted not displacing: rate > 0,
   largest first; the scan runs the first k of each;
3. the top predicted-catastrophic pair is always among the displacing k (it replaces the k-th if
   needed): the displacing pair whose predicted top gainer is catastrophic for y+ (meaning listed in
   ``opposites``), the most negative rate first; if no pair's top gainer is, the pair whose first
   catastrophic gainer ranks highest (``catastrophic_rank``, then the rate).

    python -m experiments.persona.scan --model-dir resources/models/M --data persona.jsonl \
        --words '["yes", "no", ...]' --meanings '{...}' --opposites '{...}' \
        --class-of-meaning '{"affirmative": "No", "negative": "Yes"}' --seeds 9773 5290 8767 --k 3 \
        --recipe pair --stop-at 0.65 --heldout-prompts 64 --out-predictions P.csv --out-selected S.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import pandas as pd
import torch

from experiments.common.cli import UserError, main_guard, thread_count
from experiments.common.io import read_jsonl, run_manifest, write_csv, write_json
from experiments.common.torchutil import resolve_device, set_seed, set_threads
from experiments.models.load import load_causal_lm, load_tokenizer
from experiments.persona.prompts import dpo_prompt, encode_prompt
from experiments.persona.tokens import BENIGN, CATASTROPHIC, OTHER, classify_token, meaning_of, normalise_token

log = logging.getLogger("persona.scan")


# ------------------------------------------------------------------------------------ formulas
def neg_loss_slope(loss_type: str, beta: float) -> float:
    """−ℓ′(u) at u = 0 (the first step, policy = reference): DPO β/2, IPO 1/τ (``beta`` = τ)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if loss_type == "dpo":
        return beta / 2
    if loss_type == "ipo":
        return 1.0 / beta
    raise ValueError(f"unknown loss_type {loss_type!r}: use 'dpo' or 'ipo'")


def thm4_terms(W: torch.Tensor, h: torch.Tensor, plus: int, minus: int) -> dict[str, float]:
    """The terms of (2) for one prompt: W [V, d] the unembedding, h [d] the hidden state.

    Returns ``m``, ``alignment`` = (1 − π+ + π−)⟨W+, W−⟩, ``others`` = Σ_{z∉{y+,y−}} π(z)⟨W_z, W+ − W−⟩,
    ``bracket`` B = m − alignment − others (d/dt ln π(y+) per unit −ℓ′, W fixed), ``bracket_w``
    = B + ‖h‖²(1 − π+ + π−) (W trained as well), ``p_plus``, ``p_minus``. Float64 throughout.
    """
    W, h = W.double(), h.double()
    p = torch.softmax(W @ h, -1)
    wp, wm = W[plus], W[minus]
    pp, pm = p[plus], p[minus]
    w_diff = wp - wm
    mass = p.clone()
    mass[[plus, minus]] = 0.0
    m = (1 - pp) * (wp @ wp) + pm * (wm @ wm)
    alignment = (1 - pp + pm) * (wp @ wm)
    others = mass @ (W @ w_diff)
    bracket = m - alignment - others
    return {"m": float(m), "alignment": float(alignment), "others": float(others), "bracket": float(bracket),
            "bracket_w": float(bracket + (h @ h) * (1 - pp + pm)), "p_plus": float(pp), "p_minus": float(pm)}


def thm5_log_rates(W: torch.Tensor, p: torch.Tensor, plus: int, minus: int) -> torch.Tensor:
    """(1) per unit −ℓ′ for every token: ⟨W_z − W̄, W+ − W−⟩ [V] (W [V, d], p = π [V])."""
    W, p = W.double(), p.double()
    w_diff = W[plus] - W[minus]
    return W @ w_diff - (p @ W) @ w_diff


def predicted_gainers(W: torch.Tensor, p: torch.Tensor, plus: int, minus: int, k: int) -> list[tuple[int, float]]:
    """The k tokens (y+, y− excluded) with the largest predicted probability rate π(z)·(1) per unit −ℓ′."""
    rate = p.double() * thm5_log_rates(W, p, plus, minus)
    rate[[plus, minus]] = -float("inf")
    top = rate.topk(k)
    return list(zip(top.indices.tolist(), top.values.tolist()))


def step0_prediction(W: torch.Tensor, h: torch.Tensor, logp: torch.Tensor, plus: int, minus: int,
                     loss_type: str, beta: float, k: int = 10) -> dict:
    """Theorems 4–5 at the state a DPO run starts from (its post-SFT model): the terms of (2), ``rate``
    = d/dt ln π(y+) at step 0 (−ℓ′(0)·B), ``rate_w`` (W trained too), the k predicted gainers
    (id, d/dt π(z)), and ``logit_check`` = max |log_softmax(W h) − logp|, the model's own
    log-probs: near 0 when the logits are W h (no bias, no soft-capping), which the formulas assume."""
    slope = neg_loss_slope(loss_type, beta)
    terms = thm4_terms(W, h, plus, minus)
    W, h = W.double(), h.double()
    p = torch.softmax(W @ h, -1)
    check = float((torch.log_softmax(W @ h, -1) - logp.double().to(W.device)).abs().max())
    return terms | {"rate": slope * terms["bracket"], "rate_w": slope * terms["bracket_w"], "neg_loss_slope": slope,
                    "logit_check": check,
                    "gainers": [(i, slope * r) for i, r in predicted_gainers(W, p, plus, minus, k)]}


def simulate_sft(W: torch.Tensor, h0: torch.Tensor, target: int, stop_at: float, step_nats: float = 0.1,
                 max_iter: int = 5000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SFT on ``target`` in the unconstrained-features setting: gradient flow of ln π(target) in h (W
    fixed), dh/dt = W_target − W̄, by Euler steps of η = ``step_nats`` / ‖W_target − W̄‖² (each raises
    ln π(target) by about ``step_nats``), up to the first iterate where π(target) ≥ ``stop_at``
    (the real SFT's stopping rule). h0 [P, d] holds one row per prompt.

    Returns (h [P, d] float64, iterations [P], reached [P] bool); a row that never reaches the target
    (W_target inside the convex hull of the other rows) stops at ``max_iter``.
    """
    W = W.double()
    h = h0.double().clone()
    iters = torch.zeros(len(h), dtype=torch.long)
    reached = torch.zeros(len(h), dtype=torch.bool)
    for _ in range(max_iter + 1):
        p = torch.softmax(h @ W.T, -1)
        reached = p[:, target] >= stop_at
        todo = ~reached
        if not todo.any() or int(iters.max()) >= max_iter:
            break
        g = W[target] - p[todo] @ W
        eta = step_nats / (g * g).sum(-1).clamp_min(1e-30)
        h[todo] += eta[:, None] * g
        iters[todo] += 1
    return h, iters, reached


# ------------------------------------------------------------------------------------ candidates
def candidate_tokens(tokenizer, words: list[str]) -> list[dict]:
    """The single-token answers among ``words`` and their variants: as written, lower case,
    Capitalised and UPPER case, each with and without a leading space; a variant is kept when the
    tokenizer encodes it as exactly one token, and one text per token id (the first)."""
    out, seen = [], set()
    for word in words:
        for variant in dict.fromkeys([word, word.lower(), word.capitalize(), word.upper()]):
            for text in (variant, " " + variant):
                ids = tokenizer.encode(text, add_special_tokens=False)
                if len(ids) == 1 and ids[0] not in seen:
                    seen.add(ids[0])
                    out.append({"text": text, "id": ids[0]})
    return out


# ------------------------------------------------------------------------------------ the scan
def scan_pairs(W: torch.Tensor, h_by_class: dict[str, torch.Tensor], candidates: list[dict],
               meanings: dict, opposites: dict, class_of_meaning: dict[str, str], vocab_meaning: list[str],
               neg_slope: float, simulate: dict | None = None, top_k: int = 3) -> pd.DataFrame:
    """Every ordered pair (y+, y−) of ``candidates`` whose y+ has a prompt class.

    ``h_by_class``: prompt class ("Yes"/"No") -> the hidden states [P, d] of that class's DPO prompts,
    after SFT (``simulate`` None) or before it (``simulate`` = {"stop_at", "step_nats", "max_iter"}: SFT
    on y+ modelled by :func:`simulate_sft`). ``vocab_meaning``: each vocabulary token's class relative
    to nothing yet, i.e. its meaning name or "" (see :func:`vocabulary_meanings`).

    Columns: chosen, rejected (texts), ids, prompts_with_amb, n_prompts, ``rate`` = mean over prompts of
    d/dt ln π(y+) at step 0 (−ℓ′·B), ``rate_w`` (W trained too), ``sign_agreement`` (share of prompts
    whose B has the sign of the mean), p_plus/p_minus (means), ``sft_reached`` and ``sft_iters`` (the
    modelled SFT), ``top_gainers`` (JSON, by mean predicted probability rate), ``top_gainer``,
    ``top_gainer_meaning`` (benign/catastrophic/other), ``top_log_rate`` (Thm 5's top token by
    ⟨W_z, W+ − W−⟩ among the candidates), ``catastrophic_rank`` (rank of the first catastrophic token
    among the predicted gainers, None if none gains), ``same_word``.
    """
    W = W.double()
    ids = [c["id"] for c in candidates]
    Wc = W[ids]                                   # [C, d]
    GV = W @ Wc.T                                 # [V, C]: ⟨W_z, W_c⟩
    rows = []
    for i, plus in enumerate(candidates):
        meaning = meaning_of(plus["text"], meanings)
        amb = class_of_meaning.get(meaning) if meaning else None
        if amb is None or amb not in h_by_class:
            continue
        h0 = h_by_class[amb]
        if simulate is not None:
            h, iters, reached = simulate_sft(W, h0, plus["id"], **simulate)
        else:
            h = h0.double()
            iters, reached = torch.zeros(len(h), dtype=torch.long), torch.ones(len(h), dtype=torch.bool)
        p = torch.softmax(h @ W.T, -1)           # [P, V]
        a = (p @ W) @ Wc.T                        # [P, C]: ⟨W̄, W_c⟩
        cat_mask = torch.tensor([classify_meaning(vm, meaning, opposites) == CATASTROPHIC for vm in vocab_meaning])
        for j, minus in enumerate(candidates):
            if j == i:
                continue
            # B = ⟨W+ − W̄, W+ − W−⟩ per prompt, equal to (2) (tests check both forms)
            B = (GV[plus["id"], i] - GV[plus["id"], j]) - (a[:, i] - a[:, j])
            log_rate = (GV[:, i] - GV[:, j])[None, :] - (a[:, i] - a[:, j])[:, None]     # [P, V], (1)/−ℓ′
            prob_rate = (p * log_rate).mean(0) * neg_slope
            prob_rate[[plus["id"], minus["id"]]] = -float("inf")
            top = prob_rate.topk(top_k)
            gainers = [{"id": int(t), "rate": float(v)} for t, v in zip(top.indices, top.values)]
            cat_rates = prob_rate[cat_mask]
            cat_rank = None
            if len(cat_rates) and float(cat_rates.max()) > 0:
                cat_rank = int((prob_rate > cat_rates.max()).sum()) + 1
            mean_b = float(B.mean())
            among = (GV[ids, i] - GV[ids, j]).clone()
            among[[i, j]] = -float("inf")
            rows.append({
                "chosen": plus["text"], "rejected": minus["text"], "chosen_id": plus["id"],
                "rejected_id": minus["id"], "prompts_with_amb": amb, "n_prompts": len(h),
                "rate": neg_slope * mean_b,
                "rate_w": neg_slope * float((B + (h * h).sum(-1) * (1 - p[:, plus["id"]] + p[:, minus["id"]])).mean()),
                "sign_agreement": float(((B < 0) == (mean_b < 0)).double().mean()),
                "p_plus": float(p[:, plus["id"]].mean()), "p_minus": float(p[:, minus["id"]].mean()),
                "sft_reached": bool(reached.all()), "sft_iters": int(iters.max()),
                "top_gainers": gainers, "catastrophic_rank": cat_rank,
                "top_log_rate": candidates[int(among.argmax())]["text"],
                "same_word": normalise_token(plus["text"]) == normalise_token(minus["text"]),
            })
    return pd.DataFrame(rows)


def classify_meaning(got: str, target: str | None, opposites: dict) -> str:
    """:func:`experiments.persona.tokens.classify_token` on meaning names ("" = no meaning)."""
    if not got or target is None:
        return OTHER
    if got == target:
        return BENIGN
    return CATASTROPHIC if got in opposites.get(target, []) else OTHER


def vocabulary_meanings(tokenizer, vocab_size: int, meanings: dict) -> list[str]:
    """The meaning name of every token id (decoded and normalised as in ``tokens.py``), or ""."""
    return [meaning_of(tokenizer.decode([i]), meanings) or "" for i in range(vocab_size)]


def select_pairs(pairs: pd.DataFrame, k: int) -> pd.DataFrame:
    """The scan's pairs by the rule of the module docstring: ``group`` displacing / not displacing,
    ``catastrophic_pick`` marks the top predicted-catastrophic pair, ``rank`` the order within the group."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ok = pairs[pairs["sft_reached"] & ~pairs["same_word"]]
    disp = ok[ok["rate"] < 0].sort_values(["rate", "chosen", "rejected"], kind="stable")
    calm = ok[ok["rate"] > 0].sort_values(["rate", "chosen", "rejected"], ascending=[False, True, True],
                                          kind="stable")
    chosen = disp.head(k).copy()
    cats = disp[disp["catastrophic_rank"].notna()]
    if len(cats):
        pick = cats.sort_values(["catastrophic_rank", "rate"], kind="stable").index[0]
        if pick not in chosen.index:
            chosen = pd.concat([chosen.iloc[: k - 1], disp.loc[[pick]]])
        chosen["catastrophic_pick"] = chosen.index == pick
    else:
        chosen["catastrophic_pick"] = False
    chosen["group"] = "displacing"
    calm = calm.head(k).copy()
    calm["catastrophic_pick"], calm["group"] = False, "not displacing"
    out = pd.concat([chosen, calm])
    out["rank"] = out.groupby("group").cumcount() + 1
    return out.reset_index(drop=True)


# ------------------------------------------------------------------------------------ model side
@torch.no_grad()
def last_hidden_states(model, prompts: list[list[int]], device) -> torch.Tensor:
    """The input of the unembedding at each prompt's last position, [P, d] float64 (one pass per prompt)."""
    got = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda mod, inputs, out: got.append(inputs[0][0, -1].detach().double().cpu()))
    try:
        for ids in prompts:
            model(input_ids=torch.tensor([ids], device=device), logits_to_keep=1)
    finally:
        hook.remove()
    return torch.stack(got)


@main_guard
def main(argv=None):
    ap = argparse.ArgumentParser(description="Theory-guided scan of single-token preference pairs (P2 Thms 4-5)")
    ap.add_argument("--model-dir", required=True, help="the model DPO starts from (recipe synonyms) or the "
                                                        "prepared model (recipe pair: SFT modelled in h)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--words", required=True, help="JSON list of candidate answer words")
    ap.add_argument("--meanings", required=True)
    ap.add_argument("--opposites", required=True)
    ap.add_argument("--class-of-meaning", required=True, help='JSON {meaning: "Yes"|"No"}: the prompt class of y+')
    ap.add_argument("--seeds", type=int, nargs="+", required=True, help="the scan runs' seeds (they pick the prompts)")
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--loss", default="dpo", choices=["dpo", "ipo"])
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--recipe", required=True, choices=["synonyms", "pair"])
    ap.add_argument("--stop-at", type=float, default=0.65)
    ap.add_argument("--step-nats", type=float, default=0.1)
    ap.add_argument("--max-iter", type=int, default=5000)
    ap.add_argument("--heldout-prompts", type=int, default=64)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--max-prompts", type=int, default=0)
    ap.add_argument("--prompt-format", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=thread_count, default=0)
    ap.add_argument("--out-predictions", required=True)
    ap.add_argument("--out-selected", required=True)
    args = ap.parse_args(argv)
    started = time.time()
    set_threads(args.threads)
    set_seed(0)
    device = resolve_device(args.device)
    meanings, opposites = json.loads(args.meanings), json.loads(args.opposites)
    class_of_meaning = json.loads(args.class_of_meaning)
    tok = load_tokenizer(args.model_dir)
    model = load_causal_lm(args.model_dir, device=device)
    model.eval()
    W = model.get_output_embeddings().weight.detach().double().cpu()
    candidates = candidate_tokens(tok, json.loads(args.words))
    if len(candidates) < 2:
        raise UserError(f"only {len(candidates)} of the candidate words are single tokens for this tokenizer")
    records = read_jsonl(args.data)
    pool = "heldout" if args.recipe == "pair" else "all"
    h_by_class, prompt_ids = {}, {}
    for amb in sorted(set(class_of_meaning.values())):
        picked = [dpo_prompt(records, amb, s, pool, args.heldout_prompts, args.split_seed, args.max_prompts)
                  for s in args.seeds]
        prompt_ids[amb] = [r["id"] for r in picked]
        h_by_class[amb] = last_hidden_states(
            model, [encode_prompt(tok, r["question"], args.prompt_format) for r in picked], device)
    simulate = ({"stop_at": args.stop_at, "step_nats": args.step_nats, "max_iter": args.max_iter}
                if args.recipe == "pair" else None)
    vocab_meaning = vocabulary_meanings(tok, W.shape[0], meanings)
    pairs = scan_pairs(W, h_by_class, candidates, meanings, opposites, class_of_meaning, vocab_meaning,
                       neg_loss_slope(args.loss, args.beta), simulate)
    if pairs.empty:
        raise UserError("no candidate y+ has a meaning mapped by class_of_meaning")
    for col in ("top_gainer", "top_gainer_meaning"):
        pairs[col] = None
    for idx, row in pairs.iterrows():
        g = row["top_gainers"]
        for item in g:
            item["token"] = tok.decode([item["id"]])
            item["meaning"] = classify_token(item["token"], row["chosen"], meanings, opposites)
        pairs.at[idx, "top_gainer"], pairs.at[idx, "top_gainer_meaning"] = g[0]["token"], g[0]["meaning"]
        pairs.at[idx, "top_gainers"] = json.dumps(g, ensure_ascii=False)
    selected = select_pairs(pairs, args.k)
    write_csv(pairs, args.out_predictions)
    write_json(args.out_selected, {
        "rule": "k most negative and k most positive predicted d/dt ln π(y+) at DPO step 0 (P2 Thm 4), "
                "eligible pairs only, the top predicted-catastrophic displacing pair always included",
        "state": ("post-SFT model (h, W)" if simulate is None else
                  "prepared model's h after modelled SFT on y+ (gradient flow in h, W fixed) to "
                  f"π(y+) ≥ {args.stop_at}"),
        "k": args.k, "seeds": args.seeds, "prompt_ids": prompt_ids, "n_candidates": len(candidates),
        "candidates": [c["text"] for c in candidates], "n_pairs": len(pairs),
        "n_predicted_displacing": int((pairs["rate"] < 0).sum()),
        "pairs": json.loads(selected.drop(columns=["top_gainers"]).to_json(orient="records", force_ascii=False)),
        "manifest": run_manifest(device=str(device), started=started),
    })
    log.info("%d candidates, %d pairs, %d predicted to displace; selected %s", len(candidates), len(pairs),
             int((pairs["rate"] < 0).sum()), list(zip(selected["chosen"], selected["rejected"], selected["group"])))


if __name__ == "__main__":
    main()
