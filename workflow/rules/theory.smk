# P1 §3-4: Theorem 1 checked on every input, the controlled SFT-vs-RFT experiments, the separation.


include: "theory_helpers.smk"


rule theorem1_micro:
    output:
        "results/{scale}/theory/theorem1/micro.csv",
    log:
        "logs/{scale}/theorem1/micro.log",
    benchmark:
        "benchmarks/{scale}/theorem1/micro.tsv",
    params:
        c=THEORY["theorem1"]["micro"],
        lengths=",".join(str(n) for n in THEORY["theorem1"]["micro"]["lengths"]),
        temperatures=",".join(str(t) for t in THEORY["theorem1"]["micro"]["temperatures"]),
        rewards=",".join(THEORY["theorem1"]["micro"]["rewards"]),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        ENV
    shell:
        "python -m experiments.theory.theorem1 micro --vocab {params.c[vocab]} --lengths {params.lengths}"
        " --inputs {params.c[inputs]} --temperatures {params.temperatures} --rewards {params.rewards}"
        " --power-iters {params.c[power_iters]} --seed {params.c[seed]} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule theorem1_single_token:
    input:
        model=f"resources/models/{THEORY['theorem1']['single_token']['model']}",
    output:
        "results/{scale}/theory/theorem1/single-token.csv",
    log:
        "logs/{scale}/theorem1/single-token.log",
    benchmark:
        "benchmarks/{scale}/theorem1/single-token.tsv",
    params:
        c=THEORY["theorem1"]["single_token"],
        prompts=json.dumps(THEORY["theorem1"]["single_token"]["prompts"]),
        temperatures=",".join(str(t) for t in THEORY["theorem1"]["single_token"]["temperatures"]),
        rewards=",".join(THEORY["theorem1"]["single_token"]["rewards"]),
        device=config["device"],
    threads: 1  # 2 torch threads gain little on a 135M single-prompt pass and lose a core to the rest
    resources:
        mem_mb=6000,
        runtime=120,
    conda:
        ENV
    shell:
        "python -m experiments.theory.theorem1 single-token --model {input.model}"
        " --prompts-json {params.prompts:q} --prompt-format {params.c[prompt_format]}"
        " --temperatures {params.temperatures} --rewards {params.rewards} --power-iters {params.c[power_iters]}"
        " --seed {params.c[seed]} --device {params.device} --threads {threads} --out {output} > {log} 2>&1"


rule controlled_pretrain:
    input:
        unpack(controlled_model_input),
    output:
        ckpt="results/{scale}/theory/controlled/{dataset}/seed~{seed}/pretrain/model.pt",
        metrics="results/{scale}/theory/controlled/{dataset}/seed~{seed}/pretrain/metrics.jsonl",
        summary="results/{scale}/theory/controlled/{dataset}/seed~{seed}/pretrain/summary.json",
    log:
        "logs/{scale}/controlled_pretrain/{dataset}/seed~{seed}.log",
    benchmark:
        "benchmarks/{scale}/controlled_pretrain/{dataset}/seed~{seed}.tsv",
    params:
        d=controlled_dataset,
        hidden=lambda w: ",".join(str(h) for h in controlled_dataset(w)["hidden"]),
        model_dir=lambda w, input: input.get("model", ""),
        bert_init=lambda w: controlled_dataset(w).get("bert_init", "pretrained"),
        data_seed=lambda w: THEORY["controlled"]["data_seed"] if THEORY["controlled"]["data_seed"] is not None else w.seed,
        mirror=config["data_mirror"] or "",
        device=config["device"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    conda:
        ENV
    shell:
        "python -m experiments.theory.controlled pretrain --dataset {wildcards.dataset} --k {params.d[k]}"
        " --hidden={params.hidden:q} --n-train {params.d[n_train]} --n-test {params.d[n_test]}"
        " --model-dir={params.model_dir:q} --bert-init {params.bert_init} --mirror={params.mirror:q}"
        " --optimizer {params.d[pretrain][optimizer]} --lr {params.d[pretrain][lr]}"
        " --epochs {params.d[pretrain][epochs]} --batch-size {params.d[pretrain][batch_size]}"
        " --seed {wildcards.seed} --data-seed {params.data_seed} --device {params.device} --threads {threads}"
        " --out {output.ckpt} --metrics {output.metrics} --summary {output.summary}"
        " --checkpoint-dir checkpoints/{wildcards.scale}/controlled_pretrain/{wildcards.dataset}/seed~{wildcards.seed}"
        " > {log} 2>&1"


rule controlled_finetune:
    input:
        unpack(controlled_model_input),
        ckpt="results/{scale}/theory/controlled/{dataset}/seed~{seed}/pretrain/model.pt",
    output:
        metrics="results/{scale}/theory/controlled/{dataset}/{variant}/{method}/seed~{seed}/metrics.jsonl",
        summary="results/{scale}/theory/controlled/{dataset}/{variant}/{method}/seed~{seed}/summary.json",
        config="results/{scale}/theory/controlled/{dataset}/{variant}/{method}/seed~{seed}/config.json",
    log:
        "logs/{scale}/controlled_finetune/{dataset}/{variant}/{method}/seed~{seed}.log",
    benchmark:
        "benchmarks/{scale}/controlled_finetune/{dataset}/{variant}/{method}/seed~{seed}.tsv",
    params:
        v=controlled_variant,
        c=THEORY["controlled"],
        out_dir=subpath(output.summary, parent=True),
        model_dir=lambda w, input: input.get("model", ""),
        mirror=config["data_mirror"] or "",
        device=config["device"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=720,
    conda:
        ENV
    shell:
        "python -m experiments.theory.controlled finetune --init {input.ckpt} --method {wildcards.method}"
        " --reward {params.v[reward]} --custom-reward {params.c[custom_reward]}"
        " --frac-modified {params.c[frac_modified]} --optimizer {params.v[optimizer]} --lr {params.v[lr]}"
        " --epochs {params.v[epochs]} --batch-size {params.v[batch_size]} --seed {wildcards.seed}"
        " --model-dir={params.model_dir:q} --mirror={params.mirror:q} --device {params.device}"
        " --threads {threads} --out-dir {params.out_dir} --checkpoint-dir"
        " checkpoints/{wildcards.scale}/controlled_finetune/{wildcards.dataset}/{wildcards.variant}/{wildcards.method}/seed~{wildcards.seed}"
        " > {log} 2>&1"


rule theory_separation:
    output:
        "results/{scale}/theory/separation.csv",
    log:
        "logs/{scale}/theory_separation.log",
    benchmark:
        "benchmarks/{scale}/theory_separation.tsv",
    params:
        c=THEORY["separation"],
        sigmas=",".join(str(s) for s in THEORY["separation"]["sigmas"]),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    conda:
        ENV
    shell:
        "python -m experiments.theory.separation --k {params.c[k]} --lr {params.c[lr]} --target {params.c[target]}"
        " --sigmas {params.sigmas} --out {output} > {log} 2>&1"


rule theory_aggregate:
    input:
        summaries=[f"{run}/summary.json" for run in controlled_runs()],
        metrics=[f"{run}/metrics.jsonl" for run in controlled_runs()],
        configs=[f"{run}/config.json" for run in controlled_runs()],
    output:
        "results/{scale}/theory/controlled.csv",
    log:
        "logs/{scale}/theory_aggregate.log",
    benchmark:
        "benchmarks/{scale}/theory_aggregate.tsv",
    params:
        runs=controlled_runs(),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "python -m experiments.theory.report aggregate --runs {params.runs} --out {output} > {log} 2>&1"


rule theory_figures:
    input:
        micro="results/{scale}/theory/theorem1/micro.csv",
        single="results/{scale}/theory/theorem1/single-token.csv",
        controlled="results/{scale}/theory/controlled.csv",
        separation="results/{scale}/theory/separation.csv",
    output:
        table=figure_outputs("table_theory", (".csv", ".md"), "theory"),
        theorem1=figure_outputs("theory_theorem1", (".png", ".pdf"), "theory"),
        controlled=figure_outputs("theory_controlled", (".png", ".pdf"), "theory"),
        separation=figure_outputs("theory_separation", (".png", ".pdf"), "theory"),
    log:
        "logs/{scale}/theory_figures.log",
    benchmark:
        "benchmarks/{scale}/theory_figures.tsv",
    params:
        scale="{scale}",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "python -m experiments.theory.report figures --micro {input.micro} --single-token {input.single}"
        " --controlled {input.controlled} --separation {input.separation} --scale {params.scale}"
        " --out-dir figures/{wildcards.scale} > {log} 2>&1"
