"""Short CUDA check of the P1 theory code (run on a lent GPU machine; not part of CI).

    python .ci/gpu_check_theory.py OUT_DIR

A. Theorem 1, single-token family, on a random micro transformer: CUDA vs CPU rows (γ, ‖∇V‖, STD).
B. Controlled experiments on digits through the CLI: CUDA vs CPU summaries (MLP, 30 + 30 epochs).
C. The paper-scale architectures on CUDA with a fake Hub-schema mirror: CIFAR10 with the full-width
   ResNet18 and STS-B with a tiny random BERT (pretrain + finetune through the CLI), plus the time of
   one full-width ResNet18 training step on a batch of 512 (to size the paper's 1000 + 5000 epochs).
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_theory_controlled as T  # noqa: E402  (fake-mirror builders)

from experiments.theory import controlled as C  # noqa: E402
from experiments.theory import controlled_data as D  # noqa: E402
from experiments.theory import controlled_models as CM  # noqa: E402
from experiments.theory.theorem1 import micro_transformer, single_token_rows  # noqa: E402

out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gpu_check_theory")
out.mkdir(parents=True, exist_ok=True)
DEV = os.environ.get("CHECK_DEVICE", "cuda")  # CHECK_DEVICE=cpu: a dry run of this script on a CPU machine
sync = torch.cuda.synchronize if DEV == "cuda" else (lambda: None)
report = {"device": torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu", "torch": torch.__version__}

# A -------------------------------------------------------------------------------------------
rows = {}
for dev in (DEV, "cpu"):
    model = micro_transformer(vocab=64, seed=0, hidden=32).float().to(dev)
    prompts = [torch.tensor([1, 5, 9, 2]), torch.tensor([7, 3])]
    t = time.time()
    rows[dev] = single_token_rows(model, prompts, temperatures=[1.0, 0.1, 0.01], rewards=["random", "indicator"],
                                  seed=0, iters=30)
    report[f"theorem1_{dev}_s"] = round(time.time() - t, 2)
rel = lambda a, b: abs(a - b) / max(abs(b), 1e-300)  # noqa: E731
report["theorem1_max_rel_diff"] = {k: max(rel(a[k], b[k]) for a, b in zip(rows[DEV], rows["cpu"]))
                                   for k in ("gamma", "grad_norm", "std")}
report["theorem1_all_within_bound_cuda"] = all(r["within_bound"] for r in rows[DEV])

# B -------------------------------------------------------------------------------------------
summ = {}
for dev in (DEV, "cpu"):
    ck = out / f"digits_{dev}.pt"
    C.main(["pretrain", "--dataset", "digits", "--epochs", "30", "--seed", "0", "--device", dev, "--out", str(ck)])
    for method in ("sft", "rft_exact"):
        d = out / f"digits_{dev}_{method}"
        C.main(["finetune", "--init", str(ck), "--method", method, "--epochs", "30", "--device", dev,
                "--out-dir", str(d)])
        summ[(dev, method)] = json.loads((d / "summary.json").read_text())["final"]
report["controlled_digits"] = {
    f"{dev}/{m}": {g: round(summ[(dev, m)][g]["reward"], 6) for g in ("modified", "unmodified")}
    for dev, m in summ}
report["controlled_digits_max_abs_diff"] = max(
    abs(summ[(DEV, m)][g]["reward"] - summ[("cpu", m)][g]["reward"])
    for m in ("sft", "rft_exact") for g in ("modified", "unmodified"))

# C -------------------------------------------------------------------------------------------
mirror = out / "mirror"
rng = np.random.default_rng(0)
src = D.SOURCES["cifar10"]
for hub_file, n in zip((src.train, src.test), (512, 64), strict=True):
    labels = np.arange(n) % 10
    images = [(rng.integers(0, 100, (32, 32, 3)) + 15 * c).astype(np.uint8) for c in labels]
    T._image_parquet(mirror / D.mirror_file("cifar10", hub_file), images, labels, "img")
src = D.SOURCES["stsb"]
T._stsb_parquet(mirror / D.mirror_file("stsb", src.train), 64, rng)
T._stsb_parquet(mirror / D.mirror_file("stsb", src.test), 16, rng)
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification  # noqa: E402

bert = out / "bert"
bert.mkdir(exist_ok=True)
(bert / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *T.WORDS]) + "\n")
BertForSequenceClassification(BertConfig(vocab_size=5 + len(T.WORDS), hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64)).save_pretrained(bert)
AutoTokenizer.from_pretrained(bert).save_pretrained(bert)

t = time.time()
C.main(["pretrain", "--dataset", "cifar10", "--mirror", str(mirror), "--n-train", "512", "--n-test", "64",
        "--epochs", "3", "--log-every", "1", "--device", DEV, "--out", str(out / "cifar.pt")])
C.main(["finetune", "--init", str(out / "cifar.pt"), "--method", "rft_exact", "--epochs", "2", "--log-every", "1",
        "--mirror", str(mirror), "--device", DEV, "--out-dir", str(out / "cifar_ft")])
report["cifar10_resnet18_cuda_s"] = round(time.time() - t, 1)
report["cifar10_ft_final"] = json.loads((out / "cifar_ft" / "summary.json").read_text())["final"]
t = time.time()
C.main(["pretrain", "--dataset", "stsb", "--model-dir", str(bert), "--mirror", str(mirror), "--k", "3",
        "--epochs", "3", "--log-every", "1", "--device", DEV, "--out", str(out / "stsb.pt")])
C.main(["finetune", "--init", str(out / "stsb.pt"), "--method", "sft", "--epochs", "2", "--log-every", "1",
        "--mirror", str(mirror), "--device", DEV, "--out-dir", str(out / "stsb_ft")])
report["stsb_bert_cuda_s"] = round(time.time() - t, 1)
report["stsb_ft_final"] = json.loads((out / "stsb_ft" / "summary.json").read_text())["final"]

net = CM.ResNet18(10, 3).to(DEV)
opt = torch.optim.Adam(net.parameters(), 1e-4)
x, y = torch.randn(512, 3, 32, 32, device=DEV), torch.randint(10, (512,), device=DEV)
for i in range(13 if DEV == "cuda" else 3):
    if i == (3 if DEV == "cuda" else 1):
        sync()
        t = time.time()
    loss = torch.nn.functional.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
sync()
step = (time.time() - t) / (10 if DEV == "cuda" else 2)
report["resnet18_step_512_s"] = round(step, 4)
report["paper_cifar_hours_estimate (20 steps/epoch x 6000 epochs, training steps only)"] = round(
    step * 20 * 6000 / 3600, 2)
text = json.dumps(report, indent=1, default=str)
(out / "report.json").write_text(text)
print(text)
