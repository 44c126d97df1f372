# Reproducibility suite for Razin et al. (P1: vanishing gradients in RFT; P2: likelihood displacement in DPO).
#
#   snakemake --cores all                        # tiny scale (default): SmolLM2-135M on CPU
#   snakemake --cores all --config scale=smoke   # CI: random micro models, ~1-2 min
#   snakemake --workflow-profile workflow/profiles/slurm --config scale=paper   # GPU cluster
#
# Result path grammar (every path below is relative to the working directory):
#   resources/models/<model>/                              prepared HF folder (safetensors + tokenizer)
#   resources/data/persona.jsonl                           normalised persona records
#   results/<scale>/persona/<model>/sft/{model/,metrics.jsonl,summary.json}
#                                                          stage A: single-token SFT (recipe synonyms: paper scale)
#   results/<scale>/persona/<model>/sft/<y+>/amb~<class>/{model/,metrics.jsonl,summary.json}
#                                                          stage A, recipe pair: SFT on y+ until held-out π(y+) ≥ 0.65
#   results/<scale>/persona/<model>/scan/{predictions.csv,selected.json}
#                                                          Theorems 4-5 predicted for every candidate pair; the picks
#   results/<scale>/persona/<model>/scan/<init>~<loss>/<y+>-<y->/seed~<n>/…   DPO on the picked pairs
#   results/<scale>/persona/<model>/<init>~<loss>/<y+>-<y->/seed~<n>/{config.json,metrics.jsonl,manifest.json,summary.json}
#                                                          one single-prompt run; init in {sft, base}, loss in {dpo, ipo}
#   results/<scale>/persona/{runs,steps}.csv               tidy aggregates (one row per run / per run x step)
#   results/<scale>/persona/{scan_runs,scan_steps}.csv, scan_summary.json   the scan's runs; predicted vs observed
#   figures/<scale>/table_persona.{csv,md,tex}             P2 Tables 1-3 layout, paper numbers beside ours
#   figures/<scale>/persona_pi_chosen.{png,pdf}            π(y+) over steps, mean and 95% CI over seeds
#   results/<scale>/theory/theorem1/{micro,single-token}.csv
#                                                          P1 Theorem 1, one row per input x reward x temperature
#   results/<scale>/theory/controlled/<dataset>/seed~<n>/pretrain/{model.pt,metrics.jsonl,summary.json}
#   results/<scale>/theory/controlled/<dataset>/<variant>/<method>/seed~<n>/{config.json,metrics.jsonl,summary.json}
#                                                          P1 §4.2; method in {sft, rft_exact, reinforce}
#   results/<scale>/theory/{controlled,separation}.csv     tidy aggregates (P1 §4.2 curves; §4.3 steps per sigma)
#   figures/<scale>/table_theory.{csv,md}                  bound share, envelope/separation slopes, final rewards
#   figures/<scale>/theory_{theorem1,controlled,separation}.{png,pdf}
#   resources/data/grue/<loader>.jsonl                     normalised GRUE task records (prompt, references, meta)
#   results/<scale>/rft/sentiment_reward/{model.json,report.json}   tiny: the sentiment reward trained in the DAG
#   results/<scale>/rft/stats/<task>/<model>/{per_input.csv,samples.jsonl,summary.json}
#                                                          P1 Finding I: reward mean/std of k samples per input
#   results/<scale>/rft/reward_stats.csv                   tidy, every task x model x input
#   figures/<scale>/table_reward_stats.{csv,md}, figures/<scale>/rft_reward_stats.{png,pdf}
#   resources/data/preferences/<dataset>.jsonl             normalised preference pairs (id, prompt, chosen, rejected)
#   results/<scale>/ches/<model>/<dataset>/scores.csv      CHES, length-normalised CHES, -edit distance, last-hidden similarity
#   results/<scale>/ches/<model>/<dataset>/<loss>/<measure>/q~<quantile>/seed~<n>/{summary.json,per_example.csv}
#                                                          DPO on the subset centred at that quantile of the measure
#   results/<scale>/ches/{runs,pairs}.csv; figures/<scale>/table_ches.{csv,md}, figures/<scale>/ches_quantiles.{png,pdf}
#   results/<scale>/rft/sft/<task>/sft_d<data frac>_s<steps frac>/seed~<n>/{model/,summary.json,train_log.csv}
#   results/<scale>/rft/runs/<task>/<pretrained|sft_d…_s…>/<default|lr_x…|temp_…|ent_…>/seed~<n>/
#       {summary.json,diagnostics.csv,per_input.csv}; results/<scale>/rft/finetune_runs.csv;
#       figures/<scale>/table_rft_{findings,heuristics,cheap_sft}.{csv,md}, rft_{finding2,heuristics,cheap_sft,diagnostics}.*
#   results/<scale>/refusal/{dpo_prompts.jsonl,sft_data.jsonl}; results/<scale>/refusal/<model>/{sft/,pairs.jsonl,
#       samples.jsonl,gold.jsonl,ches_scores.csv}, …/<model>/<arm>/seed~<n>/{summary.json,responses.jsonl}
#       (arm: initial (the model before DPO, the arms' seeds) | dpo | dpo_sft_c<λ> | gold | ches_filtered | dpo_rr);
#       results/<scale>/refusal/runs.csv (one row per model, arm incl. initial, seed);
#       figures/<scale>/table_refusal.{csv,md}, table_refusal_top_ches.{csv,md}, refusal_rates.{png,pdf}
#   figures/<scale>/summary.{csv,md}                       one row per claim of the papers (`snakemake summary`)
#   figures/<scale>/table_runtime.{csv,md}                 wall time and peak RSS per rule and branch (+ fixed cost)
#   figures/<scale>/table_runtime_{projection,critical_path}.{csv,md}   the critical path, projected wall on 2/8/32 cores, packing loss
#   figures/<scale>/<name>.provenance.json                 beside every figure/table: the run, machine and precision
#                                                          that made it (experiments.common.provenance)
#   logs/<scale>/<rule>/...log, benchmarks/<scale>/<rule>/...tsv   one log and one benchmark per job
#   checkpoints/<scale>/<rule>/...                         resumable trainer checkpoints (removed when the job ends)
#   report.html                                            `snakemake --report report.html` (captions: workflow/report/)


from snakemake.utils import min_version

min_version("9.19")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/persona.smk"
include: "workflow/rules/theory.smk"
include: "workflow/rules/rft.smk"
include: "workflow/rules/ches.smk"
include: "workflow/rules/refusal.smk"
include: "workflow/rules/summary.smk"

report_setup()  # with --report: the captions' provenance lines (workflow/rules/common.smk)


rule all:
    default_target: True
    input:
        final_outputs(),

