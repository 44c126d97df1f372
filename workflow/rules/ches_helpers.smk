# Config checks and target helpers of workflow/rules/ches.smk, included at its top (before its rules,
# some of which call them while they are parsed; `snakemake --lint` wants functions apart from rules).

def ches_runs():
    d = CHES["dpo"]
    return [
        f"results/{SCALE}/ches/{m}/{ds}/{loss}/{measure}/q~{q:g}/seed~{seed}"
        for m in CHES["models"]
        for ds in CHES["datasets"]
        for loss in d["losses"]
        for measure in CHES["measures"]
        for q in CHES["quantiles"]
        for seed in CHES["seeds"]
    ]


def ches_figures():
    return [f"figures/{SCALE}/table_ches.{ext}" for ext in ("csv", "md")] + [
        f"figures/{SCALE}/ches_quantiles.{ext}" for ext in ("png", "pdf")
    ]
