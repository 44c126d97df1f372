# Config checks and target helpers of workflow/rules/theory.smk, included at its top (before its rules,
# some of which call them while they are parsed; `snakemake --lint` wants functions apart from rules).

if "stsb" in THEORY["controlled"]["datasets"] and THEORY["controlled"]["datasets"]["stsb"]["model"] is None:
    raise WorkflowError("theory.controlled.datasets.stsb.model: STS-B needs a BERT classifier from models")


def controlled_dataset(wildcards):
    if wildcards.dataset not in THEORY["controlled"]["datasets"]:
        raise WorkflowError(f"dataset {wildcards.dataset!r} is not in theory.controlled.datasets")
    return THEORY["controlled"]["datasets"][wildcards.dataset]


def controlled_variant(wildcards):
    spec = controlled_dataset(wildcards)["finetune"]
    if wildcards.variant not in spec:
        raise WorkflowError(f"no finetune variant {wildcards.variant!r} for {wildcards.dataset}")
    return spec[wildcards.variant]


def controlled_model_input(wildcards):
    """The prepared BERT folder for stsb; nothing for the image/digit datasets."""
    name = controlled_dataset(wildcards)["model"]
    return {"model": f"resources/models/{name}"} if name else {}


def controlled_runs():
    c = THEORY["controlled"]
    return [
        f"results/{SCALE}/theory/controlled/{d}/{v}/{m}/seed~{seed}"
        for d, spec in c["datasets"].items()
        for v, var in spec["finetune"].items()
        for m in var["methods"]
        for seed in c["seeds"]
    ]


def theory_figures():
    return [f"figures/{SCALE}/table_theory.{ext}" for ext in ("csv", "md")] + [
        f"figures/{SCALE}/theory_{name}.{ext}"
        for name in ("theorem1", "controlled", "separation")
        for ext in ("png", "pdf")
    ]


def theory_results():
    return [f"results/{SCALE}/theory/{name}.csv" for name in ("controlled", "separation")] + [
        f"results/{SCALE}/theory/theorem1/{family}.csv" for family in ("micro", "single-token")
    ]
