# Config checks and target helpers of workflow/rules/persona.smk, included at its top (before its rules,
# some of which call them while they are parsed; `snakemake --lint` wants functions apart from rules).

for _m in config["persona"]["models"]:
    if _m not in config["models"]:
        raise WorkflowError(f"persona.models.{_m}: no such model in models (have {sorted(config['models'])})")


def persona_setting(wildcards):
    for s in PERSONA["settings"]:
        if s["init"] == wildcards.init and s["loss"] == wildcards.loss:
            return s
    raise WorkflowError(f"no persona setting {wildcards.init}~{wildcards.loss}")


def persona_pair_name(pair):
    """``<y+>-<y->`` of a run folder, a leading space written "_" (experiments.persona.tokens.token_slug)."""
    from experiments.persona.tokens import token_slug

    return f"{token_slug(pair['chosen'])}-{token_slug(pair['rejected'])}"


def persona_token(slug):
    """The answer token of a folder name: "_yes" -> " yes" (experiments.persona.tokens.token_from_slug)."""
    from experiments.persona.tokens import token_from_slug

    return token_from_slug(slug)


def persona_pair(wildcards):
    for p in PERSONA["models"][wildcards.model]["pairs"]:
        if persona_pair_name(p) == wildcards.pair:
            return p
    raise WorkflowError(f"no persona pair {wildcards.pair} for {wildcards.model}")


def persona_sft_model(scale, model, pair):
    """The post-SFT model a pair's runs start from: the one shared model (recipe synonyms) or the
    pair's own, trained on y+ over its prompt class (recipe pair; shared by pairs with the same y+ and class)."""
    from experiments.persona.tokens import token_slug

    if PERSONA["sft"]["recipe"] == "synonyms":
        return f"results/{scale}/persona/{model}/sft/model"
    return f"results/{scale}/persona/{model}/sft/{token_slug(pair['chosen'])}/amb~{pair['prompts_with_amb']}/model"


def persona_init_model(wildcards):
    if wildcards.init == "sft":
        return persona_sft_model(wildcards.scale, wildcards.model, persona_pair(wildcards))
    return f"resources/models/{wildcards.model}"


def persona_prompt_pool():
    """DPO prompt selection: the paper's (any prompt of the class) with recipe synonyms; the per-pair
    SFT's held-out prompts with recipe pair (the same split for every setting, so Tables 1-3 share prompts)."""
    sft = PERSONA["sft"]
    if sft["recipe"] == "synonyms":
        return "--prompt-pool all"
    return (f"--prompt-pool heldout --heldout-prompts {sft['heldout_prompts']} --split-seed {sft['seed']}"
            f" --max-prompts {sft['max_prompts']}")


def persona_runs():
    return [
        f"results/{SCALE}/persona/{m}/{s['init']}~{s['loss']}/{persona_pair_name(p)}/seed~{seed}"
        for m, spec in PERSONA["models"].items()
        for s in PERSONA["settings"]
        for p in spec["pairs"]
        for seed in PERSONA["seeds"]
    ]


def persona_run_files(name):
    return [f"{run}/{name}" for run in persona_runs()]


def persona_scan_spec():
    """persona.scan with the schema's defaults (the schema fills them only where the file has a scan block)."""
    spec = {"enabled": False, "words": [], "k": 3, "seeds": [9773, 5290, 8767],
            "class_of_meaning": {"affirmative": "No", "negative": "Yes"}, "step_nats": 0.1}
    return spec | PERSONA.get("scan", {})


def persona_scan_models():
    return list(PERSONA["models"]) if persona_scan_spec()["enabled"] else []


def persona_scan_setting():
    """The scan's runs: the post-SFT DPO setting of persona.settings."""
    for s in PERSONA["settings"]:
        if (s["init"], s["loss"]) == ("sft", "dpo"):
            return s
    raise WorkflowError("persona.scan.enabled needs a persona.settings entry with init sft and loss dpo")


def persona_scan_input_model(wildcards):
    """What the scan reads h and W from: the shared post-SFT model (recipe synonyms), or the prepared
    model, whose h the scan moves by a modelled SFT on each y+ (recipe pair; experiments.persona.scan)."""
    if PERSONA["sft"]["recipe"] == "synonyms":
        return f"results/{wildcards.scale}/persona/{wildcards.model}/sft/model"
    return f"resources/models/{wildcards.model}"


def persona_scan_pair(wildcards):
    """A scan pair from its folder name; its prompt class is scan.class_of_meaning of y+'s meaning."""
    from experiments.persona.tokens import meaning_of, token_from_slug

    plus, minus = (token_from_slug(t) for t in wildcards.pair.split("-"))
    meaning = meaning_of(plus, PERSONA["meanings"])
    classes = persona_scan_spec()["class_of_meaning"]
    if meaning not in classes:
        raise WorkflowError(f"scan pair {wildcards.pair}: y+ has no prompt class (meaning {meaning!r})")
    return {"chosen": plus, "rejected": minus, "prompts_with_amb": classes[meaning]}


def persona_scan_init_model(wildcards):
    return persona_sft_model(wildcards.scale, wildcards.model, persona_scan_pair(wildcards))


def persona_scan_selected(wildcards):
    return [f"results/{wildcards.scale}/persona/{m}/scan/selected.json" for m in persona_scan_models()]


def persona_scan_run_files(wildcards):
    """The scan's runs, known once each model's persona_scan checkpoint has chosen its pairs."""
    from experiments.persona.tokens import token_slug

    out = []
    for m in persona_scan_models():
        with open(checkpoints.persona_scan.get(scale=wildcards.scale, model=m).output.selected) as f:
            pairs = json.load(f)["pairs"]
        out += [f"results/{wildcards.scale}/persona/{m}/scan/sft~dpo/{token_slug(p['chosen'])}-"
                f"{token_slug(p['rejected'])}/seed~{seed}/summary.json"
                for p in pairs for seed in persona_scan_spec()["seeds"]]
    return out


def persona_provenance_dirs():
    """The folders whose JSON files say the precision of the persona table and figure: every DPO/IPO run
    and the SFT runs they start from."""
    sft = {os.path.dirname(persona_sft_model(SCALE, m, p)) for m, spec in PERSONA["models"].items()
           for p in spec["pairs"]}
    return persona_runs() + sorted(sft)


def persona_figures():
    out = [f"figures/{SCALE}/table_persona.{ext}" for ext in ("csv", "md", "tex")] + [
        f"figures/{SCALE}/persona_pi_chosen.{ext}" for ext in ("png", "pdf")
    ]
    if persona_scan_models():
        out += [f"figures/{SCALE}/table_persona_scan.{ext}" for ext in ("csv", "md")]
        out += [f"figures/{SCALE}/persona_scan.{ext}" for ext in ("png", "pdf")]
        out += [f"results/{SCALE}/persona/scan_summary.json"]
    return out
