"""The runtime table (experiments.runtime) from hand-made Snakemake benchmark files."""

import pytest

from experiments.common.cli import UserError
from experiments.runtime import branch_of, collect, runtime_table

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _bench(path, s, rss):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{s}\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t50\t{s}\n")


def test_sums_maxima_and_branches(tmp_path):
    _bench(tmp_path / "tiny/persona_dpo/m/a.tsv", 40.0, 2048)
    _bench(tmp_path / "tiny/persona_dpo/m/b.tsv", 50.5, 1024)
    _bench(tmp_path / "tiny/refusal_arm/m/dpo.tsv", 100.0, 4096)
    _bench(tmp_path / "prepare_model/smollm.tsv", 30.0, 512)  # a scale-free rule: counted
    _bench(tmp_path / "prepare_persona.tsv", 1.0, 100)  # one job, no wildcards, no scale
    _bench(tmp_path / "tiny/theory_separation.tsv", 16.0, 300)  # one job per scale
    _bench(tmp_path / "smoke/persona_dpo/m/a.tsv", 9999.0, 9999)  # another scale: ignored
    t = runtime_table(collect(tmp_path, "tiny")).set_index(["branch", "rule"])
    assert t.loc[("P2 §3 persona", "persona_dpo"), "jobs"] == 2
    assert t.loc[("P2 §3 persona", "persona_dpo"), "wall s (sum)"] == 90.5
    assert t.loc[("P2 §3 persona", "persona_dpo"), "wall s (longest job)"] == 50.5
    assert t.loc[("P2 §3 persona", "persona_dpo"), "peak RSS GiB"] == 2.0
    assert t.loc[("P2 §6 refusal", "(branch total)"), "peak RSS GiB"] == 4.0
    assert t.loc[("P2 §3 persona", "prepare_persona"), "jobs"] == 1
    assert t.loc[("P1 theory", "theory_separation"), "wall s (sum)"] == 16.0
    assert t.loc[("all", "(all jobs)"), "jobs"] == 6 and t.loc[("all", "(all jobs)"), "wall s (sum)"] == 237.5


def test_branch_names_and_bad_files(tmp_path):
    assert branch_of("rft_stats_figures") == "P1 GRUE reward statistics"
    assert branch_of("rft_train") == "P1 GRUE finetuning"
    assert branch_of("ches_dpo") == "P2 §5 CHES" and branch_of("controlled_pretrain") == "P1 theory"
    assert branch_of("theorem1") == "P1 theory"  # logs/<scale>/theorem1/{micro,single-token}
    (tmp_path / "tiny/x").mkdir(parents=True)
    (tmp_path / "tiny/x/a.tsv").write_text("not\ta benchmark\n1\t2\n")
    with pytest.raises(UserError, match="not a Snakemake benchmark"):
        collect(tmp_path, "tiny")
