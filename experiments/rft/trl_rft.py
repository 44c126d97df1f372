"""GRPO and RLOO reinforcement finetuning through TRL's ``GRPOTrainer`` / ``RLOOTrainer`` with the
suite's GRUE rewards, recording per optimizer step the quantities of P1's vanishing-gradient story.

:func:`train_trl` trains a causal LM in place and returns one row per optimizer step:

* ``mean_reward``: the mean reward of the step's completions (inputs_per_step × num_generations);
* ``mean_std``: the mean over the step's inputs of the per-input reward std (ddof 0, the plug-in
  STD_x of P1's Theorem 1) of its ``num_generations`` rewards, computed here from the rewards our
  adapter returned to TRL (float64);
* ``frac_small_std``: the fraction of the step's inputs whose std is below ``small_std_threshold``;
* ``frac_zero_std``: TRL's own ``frac_reward_zero_std`` (its ddof-1 group std ``isclose`` 0; for RLOO
  with ``beta`` > 0 it is taken on the KL-penalised rewards);
* ``grad_norm``: the Trainer's gradient norm before clipping; ``kl`` (None when ``beta`` is 0) and
  ``entropy``: TRL's logged values; ``seconds``: wall time of the step (generation included).

With a reward whose std is exactly 0 on every input, GRPO's and RLOO's advantages are exactly 0 and so
is the policy gradient (with ``beta`` 0 and no entropy bonus): the weights do not move.

How TRL is driven (TRL 1.16):

* one optimizer step = ``inputs_per_step`` distinct prompts × ``num_generations`` completions:
  ``per_device_train_batch_size`` = their product, gradient accumulation 1, ``steps_per_generation``
  1 (so one generation per step, or one per ``num_iterations`` steps); TRL's ``RepeatSampler``
  shuffles with ``seed`` and yields each prompt ``num_generations`` times in a row, so the reward
  function sees the groups as consecutive runs (the adapter checks this on an index column);
* prompts: the dataset holds the rendered text (:func:`experiments.rft.stats.render_prompt`); TRL
  1.16 has no ``max_prompt_length`` and tokenises a string prompt with the tokenizer's defaults
  (``add_special_tokens=True``, no truncation), so ``_tokenize_prompts`` is overridden to give exactly
  the ids of :func:`experiments.rft.stats.encode_batch`: the tokenizer's special tokens for ``plain``,
  none for ``chat`` (the template has them), the END of the prompt kept (``max_prompt_tokens``);
* generation: ``transformers`` ``generate`` (no vLLM) with ``max_completion_length`` =
  ``max_new_tokens``, ``temperature``/``top_p``/``top_k`` (0 = no top-k filter) and
  ``min_new_tokens`` through ``generation_kwargs``; completions are decoded without special tokens;
* the reward function gets the raw prompt and the references as dataset columns and calls the suite
  ``Reward(raw_prompts, completions, references)``;
* loss: TRL's defaults apart from ``beta``, ``epsilon``, ``num_iterations`` and (GRPO only)
  ``entropy_coef``; GRPO's default loss is ``dapo`` with group-std scaled advantages; RLOO's is the
  clipped sequence-level leave-one-out loss with the KL as a reward penalty;
* AdamW (the Trainer's default, weight decay 0, gradient clipping at the default ``max_grad_norm``
  1.0), constant learning rate without warm-up, no gradient checkpointing, nothing saved or reported;
* the reference model (``beta`` > 0) is built by TRL from the model's folder
  (``model.config._name_or_path``) and then given the in-memory policy's weights, so it is exactly the
  initial policy.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from experiments.common.cli import UserError

log = logging.getLogger("rft.trl")

ALGORITHMS = ("grpo", "rloo")
STEP_KEYS = ("step", "mean_reward", "mean_std", "frac_small_std", "frac_zero_std", "grad_norm", "kl", "entropy",
             "seconds")
# metrics TRL logs when it generates (absent from the logs of the steps that reuse a generation)
_GENERATION_METRICS = ("frac_reward_zero_std",)


# ------------------------------------------------------------------------------------------ prompts
def encode_prompts(tokenizer, texts: list[str], max_tokens: int, special_tokens: bool) -> list[list[int]]:
    """Unpadded prompt ids, equal to the unpadded rows of :func:`experiments.rft.stats.encode_batch`
    for a decoder-only model: left truncation to ``max_tokens`` (the special tokens count), the
    tokenizer's own special tokens only when ``special_tokens``. The tokenizer's sides are restored."""
    old = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        ids = tokenizer(list(texts), truncation=True, max_length=max_tokens,
                        add_special_tokens=special_tokens)["input_ids"]
    finally:
        tokenizer.truncation_side = old
    return [list(map(int, x)) for x in ids]


def trl_generation(gen_kwargs: dict) -> dict:
    """Suite sampling kwargs (:data:`experiments.rft.stats.GEN_KEYS`) -> TRL config fields."""
    from experiments.rft.stats import GEN_KEYS

    unknown = set(gen_kwargs) - GEN_KEYS
    if unknown:
        raise UserError(f"gen_kwargs: unknown key(s) {sorted(unknown)}; allowed {sorted(GEN_KEYS)}")
    if "max_new_tokens" not in gen_kwargs:
        raise UserError("gen_kwargs must set max_new_tokens (the completion length)")
    max_new = int(gen_kwargs["max_new_tokens"])
    min_new = int(gen_kwargs.get("min_new_tokens") or 0)
    temperature = float(gen_kwargs["temperature"]) if gen_kwargs.get("temperature") is not None else 1.0
    top_p = float(gen_kwargs["top_p"]) if gen_kwargs.get("top_p") is not None else 1.0
    top_k = int(gen_kwargs.get("top_k") or 0)  # None / 0: no top-k filter (TRL's 0)
    if max_new < 1:
        raise UserError(f"gen_kwargs max_new_tokens must be >= 1, got {max_new}")
    if not 0 <= min_new <= max_new:
        raise UserError(f"gen_kwargs min_new_tokens must be in [0, max_new_tokens={max_new}], got {min_new}")
    if not temperature > 0:
        raise UserError(f"gen_kwargs temperature must be > 0 for sampling, got {temperature}")
    if not 0 < top_p <= 1:
        raise UserError(f"gen_kwargs top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise UserError(f"gen_kwargs top_k must be >= 0 (0 or None: no filter), got {top_k}")
    return {"max_completion_length": max_new, "temperature": temperature, "top_p": top_p, "top_k": top_k,
            "generation_kwargs": {"min_new_tokens": min_new} if min_new else None}


# ------------------------------------------------------------------------------------------- reward
class RewardAdapter:
    """A TRL reward function (``prompts, completions, **dataset columns``) around a suite ``Reward``.

    It scores with the raw prompts and references carried as the dataset columns ``suite_prompt`` and
    ``suite_references``, checks that the completions come as ``num_generations`` consecutive
    completions of each prompt (column ``suite_index``), and keeps the rewards of the last call as an
    [inputs, num_generations] float64 array (``last``) with the inputs' dataset rows (``last_index``)."""

    __name__ = "suite_reward"  # the name TRL logs the reward under (rewards/suite_reward/mean)

    def __init__(self, reward, num_generations: int):
        self.reward = reward
        self.num_generations = num_generations
        self.last: np.ndarray | None = None
        self.last_index: np.ndarray | None = None
        self.calls = 0

    def __call__(self, prompts, completions, suite_prompt, suite_references, suite_index, **_):
        g, n = self.num_generations, len(completions)
        index = np.asarray(suite_index, dtype=np.int64)
        if n % g or index.shape != (n,):
            raise RuntimeError(f"reward called on {n} completions, not whole groups of {g}")
        groups = index.reshape(-1, g)
        if (groups != groups[:, :1]).any() or len(set(groups[:, 0].tolist())) != len(groups):
            raise RuntimeError("TRL did not pass each prompt's completions as one consecutive group: "
                               f"indices {index.tolist()}")
        scores = np.asarray(self.reward(list(suite_prompt), list(completions),
                                        [list(r) for r in suite_references]), dtype=np.float64)
        if scores.shape != (n,):
            raise UserError(f"the reward returned shape {scores.shape} for {n} completions")
        if not np.isfinite(scores).all():
            bad = int(np.flatnonzero(~np.isfinite(scores))[0])
            raise UserError(f"the reward is not finite ({scores[bad]}) for completion {completions[bad]!r} "
                            f"of input {suite_index[bad]}")
        self.calls += 1
        self.last, self.last_index = scores.reshape(-1, g), groups[:, 0].copy()
        return scores.tolist()


# ------------------------------------------------------------------------------------------ trainer
def _trainer_class(algorithm: str, encode):
    from trl import GRPOTrainer, RLOOTrainer

    base = {"grpo": GRPOTrainer, "rloo": RLOOTrainer}[algorithm]

    class SuiteTrainer(base):
        """TRL's trainer with the suite's prompt tokenisation (``encode``: texts -> ids)."""

        def _tokenize_prompts(self, prompts: list):
            if not all(isinstance(p, str) for p in prompts):
                raise TypeError("the suite passes rendered prompt strings")
            return encode(prompts), None, {}

    SuiteTrainer.__name__ = f"Suite{base.__name__}"
    return SuiteTrainer


def _recorder(adapter: RewardAdapter, threshold: float, beta: float, on_step):
    from transformers import TrainerCallback

    class StepRecorder(TrainerCallback):
        """One row per optimizer step from the Trainer's log (logging_steps 1) and the adapter's rewards;
        a non-finite loss or gradient norm is a UserError naming the step."""

        def __init__(self):
            self.rows: list[dict] = []
            self.generation: dict = {}
            self.t0 = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" not in logs:  # the end-of-training summary
                return
            step = int(state.global_step)
            loss, grad_norm = logs["loss"], logs.get("grad_norm")
            if not math.isfinite(float(loss)) or (grad_norm is not None and not math.isfinite(float(grad_norm))):
                raise UserError(f"training loss {loss} / gradient norm {grad_norm} at step {step} is not finite; "
                                "lower lr or use precision fp32")
            for key in _GENERATION_METRICS + (("kl",) if beta else ()):
                if logs.get(key) is not None:
                    self.generation[key] = float(logs[key])
            rewards = adapter.last
            std = rewards.std(axis=1)  # ddof 0
            row = {
                "step": step,
                "mean_reward": float(rewards.mean()),
                "mean_std": float(std.mean()),
                "frac_small_std": float((std < threshold).mean()),
                "frac_zero_std": self.generation.get("frac_reward_zero_std"),
                "grad_norm": None if grad_norm is None else float(grad_norm),
                "kl": (float(logs["kl"]) if logs.get("kl") is not None else self.generation.get("kl"))
                if beta else None,
                "entropy": None if logs.get("entropy") is None else float(logs["entropy"]),
                "seconds": round(time.perf_counter() - self.t0, 4),
            }
            self.rows.append(row)
            if on_step is not None:
                on_step(dict(row))

    return StepRecorder()


def _check(algorithm, inputs, *, max_prompt_tokens, num_generations, inputs_per_step, steps, lr, beta, epsilon,
           num_iterations, entropy_coef, small_std_threshold) -> None:
    for name, value, low in (("num_generations", num_generations, 2), ("inputs_per_step", inputs_per_step, 1),
                             ("steps", steps, 1), ("num_iterations", num_iterations, 1),
                             ("max_prompt_tokens", max_prompt_tokens, 1)):
        if int(value) != value or value < low:
            raise UserError(f"{name} must be an integer >= {low}, got {value!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise UserError(f"lr must be > 0, got {lr}")
    if not (math.isfinite(beta) and beta >= 0):
        raise UserError(f"beta must be >= 0, got {beta}")
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise UserError(f"epsilon must be > 0, got {epsilon}")
    if not math.isfinite(entropy_coef):
        raise UserError(f"entropy_coef must be finite, got {entropy_coef}")
    if algorithm == "rloo" and entropy_coef != 0:
        raise UserError("entropy_coef is not supported by TRL's RLOOTrainer: use 0 or algorithm grpo")
    if not (math.isfinite(small_std_threshold) and small_std_threshold >= 0):
        raise UserError(f"small_std_threshold must be >= 0, got {small_std_threshold}")
    if len(inputs) < inputs_per_step:
        raise UserError(f"{len(inputs)} input(s) but inputs_per_step is {inputs_per_step}")
    for k, r in enumerate(inputs):
        if not isinstance(r.get("prompt"), str) or not isinstance(r.get("references"), (list, tuple)):
            raise UserError(f"input {k} ({r.get('id')!r}) is not a task record with a prompt and a references list")


def train_trl(algorithm: str, model, tokenizer, inputs: list[dict], reward, *, prompt_format: str,
              max_prompt_tokens: int, gen_kwargs: dict, num_generations: int, inputs_per_step: int, steps: int,
              lr: float, beta: float, epsilon: float = 0.2, num_iterations: int = 1, entropy_coef: float = 0.0,
              seed: int = 0, precision: str = "fp32", device, work_dir, small_std_threshold: float,
              on_step=None) -> list[dict]:
    """Train ``model`` in place with TRL's GRPO or RLOO on ``inputs`` (task records) and ``reward``;
    return one row per optimizer step (keys :data:`STEP_KEYS`). ``on_step(row)`` is called after each step.
    The model is left in eval mode."""
    from datasets import Dataset
    from transformers import PrinterCallback

    from experiments.common.torchutil import resolve_precision
    from experiments.rft.stats import render_prompt

    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}: TRL runs {', '.join(ALGORITHMS)}")
    if getattr(model.config, "is_encoder_decoder", False):
        raise UserError(f"TRL's {algorithm.upper()} trainer does not support encoder-decoder models "
                        f"({type(model).__name__}): use algorithm ppo")
    _check(algorithm, inputs, max_prompt_tokens=max_prompt_tokens, num_generations=num_generations,
           inputs_per_step=inputs_per_step, steps=steps, lr=lr, beta=beta, epsilon=epsilon,
           num_iterations=num_iterations, entropy_coef=entropy_coef, small_std_threshold=small_std_threshold)
    gen = trl_generation(dict(gen_kwargs))
    device = torch.device(device)
    try:
        precision = resolve_precision(precision, device, tokens=inputs_per_step * num_generations)
    except ValueError as e:
        raise UserError(str(e)) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    folder = Path(str(getattr(model.config, "_name_or_path", "") or ""))
    trust_remote_code = False
    if beta:
        from experiments.models.load import read_prepare_manifest

        if not (folder / "config.json").is_file():
            raise UserError(f"beta > 0: TRL builds the reference model from the model's folder, but "
                            f"model.config._name_or_path ({str(folder)!r}) is not a model folder")
        trust_remote_code = ((read_prepare_manifest(folder) or {}).get("spec") or {}).get("trust_remote_code") is True

    special = prompt_format == "plain"
    texts = [render_prompt(tokenizer, r["prompt"], prompt_format) for r in inputs]
    full = tokenizer(texts, add_special_tokens=special)["input_ids"]
    truncated = sum(len(ids) > max_prompt_tokens for ids in full)
    if truncated:
        log.info("%d of %d prompts are longer than %d tokens: their start is cut", truncated, len(texts),
                 max_prompt_tokens)
    dataset = Dataset.from_list([{"prompt": t, "suite_prompt": r["prompt"],
                                  "suite_references": [str(x) for x in r["references"]], "suite_index": k}
                                 for k, (t, r) in enumerate(zip(texts, inputs, strict=True))])

    def encode(prompts):
        return encode_prompts(tokenizer, prompts, max_prompt_tokens, special)

    adapter = RewardAdapter(reward, num_generations)
    recorder = _recorder(adapter, small_std_threshold, beta, on_step)
    if algorithm == "grpo":
        from trl import GRPOConfig as Config

        extra = {"entropy_coef": float(entropy_coef)}
    else:
        from trl import RLOOConfig as Config

        extra = {}
    cfg = Config(
        output_dir=str(work_dir), learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, max_steps=steps,
        per_device_train_batch_size=inputs_per_step * num_generations, gradient_accumulation_steps=1,
        num_generations=num_generations, beta=beta, epsilon=epsilon, num_iterations=num_iterations,
        max_completion_length=gen["max_completion_length"], temperature=gen["temperature"], top_p=gen["top_p"],
        top_k=gen["top_k"], generation_kwargs=gen["generation_kwargs"], use_vllm=False, shuffle_dataset=True,
        seed=seed, data_seed=seed, report_to=[], save_strategy="no", logging_steps=1, logging_nan_inf_filter=False,
        disable_tqdm=True, bf16=precision == "bf16", fp16=False, use_cpu=device.type == "cpu",
        activation_checkpointing=False, dataloader_num_workers=0, remove_unused_columns=False,
        trust_remote_code=trust_remote_code, **extra,
    )
    trainer = _trainer_class(algorithm, encode)(model=model, reward_funcs=[adapter], args=cfg, train_dataset=dataset,
                                                processing_class=tokenizer, callbacks=[recorder])
    trainer.remove_callback(PrinterCallback)  # the rows (on_step) are the progress log
    if trainer.ref_model is not None:  # the reference is the policy as it is now, not as it was saved
        ref = trainer.accelerator.unwrap_model(trainer.ref_model)
        with torch.no_grad():
            ref.load_state_dict(model.state_dict())
    started = time.time()
    try:
        trainer.train()
    except RuntimeError as e:
        if "probability tensor" not in str(e):
            raise
        raise UserError(f"sampling for step {trainer.state.global_step + 1} failed: the policy's probabilities "
                        "are not finite; lower lr or use precision fp32") from None
    finally:
        model.eval()
    if len(recorder.rows) != steps:
        raise RuntimeError(f"{algorithm}: {len(recorder.rows)} step rows for {steps} steps")
    log.info("%s: %d steps x %d inputs x %d completions in %.1fs; mean reward %.4f -> %.4f", algorithm, steps,
             inputs_per_step, num_generations, time.time() - started, recorder.rows[0]["mean_reward"],
             recorder.rows[-1]["mean_reward"])
    return recorder.rows
