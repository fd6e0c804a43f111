"""The stages of LLaMA Pro (``stage=``): what differs between them, in one object each.

- ``pretrain`` (stage one): expand the base (unless the checkpoint is already expanded:
  its recorded new blocks train) and post-pretrain on the new domains.
- ``sft`` (stage two, LLaMA Pro-Instruct): train a checkpoint as it is (an lp export of
  stage one, or any Hugging Face causal LM), never expanding it.

Both train through ``lp.training.module``'s one step. A stage decides which methods make
sense, whether this run inserts blocks, the plan the export records, the callbacks it
adds (generation samples and overlong conversations for sft), and the record of the
stage in ``lp_expansion.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from lp.base.checkpoint_dirs import EXPANSION_FILE
from lp.core.config import choice, integer, setting, strings
from lp.core.errors import LpError
from lp.expansion import ExpansionPlan, make_plan
from lp.training.methods import Method, get_method


@dataclass
class SamplesConfig:
    """``stage.samples``: the prompts answered in TensorBoard before and after training."""

    max_new_tokens: int = setting(integer(1))
    prompts: list[str] | None = setting(strings)


@dataclass
class StageConfig:
    """The ``stage`` group: ``pretrain`` (expand, post-pretrain) or ``sft`` (instruction-tune
    a checkpoint as it is); fixed across a resume."""

    name: str = setting(choice("pretrain", "sft"), fixed=True)
    smoke_seq_len: int = setting()  # data.seq_len under debug=smoke (set by stage=sft only)
    samples: SamplesConfig = setting()  # stage=sft only


class Pretrain:
    """Stage one: expand the base, post-pretrain the new blocks (or what the method trains)."""

    name = "pretrain"

    def method(
        self, name: str, recorded: ExpansionPlan | None, checkpoint: str | None, blocks: int
    ) -> Method:
        method = get_method(name, recorded.blocks if recorded else blocks)
        if recorded and not method.inserts:
            raise LpError(f"method={name} trains base layers in place; {checkpoint} is already expanded")
        return method

    def inserts(self, recorded: ExpansionPlan | None) -> bool:
        """Whether this run inserts the new blocks itself (an expanded checkpoint has them)."""
        return recorded is None

    def plan(self, recorded: ExpansionPlan | None, layers: int, args: dict | None) -> ExpansionPlan:
        return recorded or make_plan(layers, **args)

    def callbacks(self, cfg) -> list:
        return []


class InstructionTuning:
    """Stage two: instruction-tune a checkpoint as it is, on chat data."""

    name = "sft"
    # full_finetune: every block (the paper); block_expansion: only the blocks stage one added;
    # lora: adapters on every block, merged into the export
    methods = ("full_finetune", "block_expansion", "lora")

    def method(
        self, name: str, recorded: ExpansionPlan | None, checkpoint: str | None, blocks: int
    ) -> Method:
        return sft_method(name, recorded, checkpoint)

    def inserts(self, recorded: ExpansionPlan | None) -> bool:
        return False

    def plan(self, recorded: ExpansionPlan | None, layers: int, args: dict | None) -> ExpansionPlan:
        return sft_plan(recorded, layers)

    def callbacks(self, cfg) -> list:
        return [ChatSamples(**cfg.samples), ChatStats()]


STAGES = {stage.name: stage for stage in (Pretrain(), InstructionTuning())}


def sft_method(name: str, recorded: ExpansionPlan | None, checkpoint: str | None) -> Method:
    allowed = InstructionTuning.methods
    if name not in allowed:
        raise LpError(f"method.name={name!r} is not allowed with stage=sft; allowed: {', '.join(allowed)}")
    if name == "block_expansion" and (recorded is None or not recorded.new_layers):
        raise LpError(
            f"method=block_expansion with stage=sft trains the new blocks recorded in {EXPANSION_FILE}, "
            f"but {checkpoint or 'the tiny base'} has none; use method=full_finetune or an lp export"
        )
    return get_method(name)


def sft_plan(recorded: ExpansionPlan | None, layers: int) -> ExpansionPlan:
    """Stage one's plan (its layer map goes into the export again), or the identity."""
    return recorded or make_plan(layers, 0)


def stage_record(stage: str, checkpoint: str | None, data_cfg: dict, steps: int, method: str) -> dict:
    """What an export's ``lp_expansion.json`` says besides the plan: the base model and
    the stages before this one, as the checkpoint recorded them, and this stage."""
    f = Path(checkpoint).expanduser() / EXPANSION_FILE if checkpoint else None
    previous = json.loads(f.read_text()) if f is not None and f.is_file() else {}
    stages = list(previous.get("stages", [{"stage": "pretrain"}] if previous else []))
    sources = {
        n: {k: v for k, v in s.items() if k != "shuffle_buffer"} for n, s in data_cfg["sources"].items()
    }
    stages.append({"stage": stage, "method": method, "steps": steps, "data": sources,
                   **{k: data_cfg[k] for k in ("seq_len", "packing") if k in data_cfg}})  # fmt: skip
    # the base model stage one started from, when there was a stage one
    return {"stages": stages} | ({"base_model": previous["base_model"]} if "base_model" in previous else {})


class ChatSamples(Callback):
    """Greedy answers to fixed prompts, rendered with the chat template
    (``add_generation_prompt=True``), written to TensorBoard as text
    (``samples/<i>``) before the first step and after the last."""

    def __init__(self, prompts: list[str], max_new_tokens: int = 48):
        self.prompts, self.max_new_tokens = list(prompts), max_new_tokens

    def on_train_start(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)

    def _write(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.logger is None:
            return
        tokenizer = trainer.datamodule.tokenizer
        replies = answers(pl_module.model, tokenizer, self.prompts, self.max_new_tokens)
        for i, (prompt, answer) in enumerate(zip(self.prompts, replies, strict=True)):
            text = f"**user:** {prompt}\n\n**assistant:** {answer}"
            trainer.logger.experiment.add_text(f"samples/{i}", text, global_step=trainer.global_step)


def answers(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """What ``model`` answers to each prompt (greedy), as a chat model is used."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for prompt in prompts:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt",
                return_dict=True,
            )["input_ids"].to(next(model.parameters()).device)  # fmt: skip
            with torch.no_grad():
                gen = model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                    do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                )  # fmt: skip
            out.append(tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True))
    finally:
        model.train(was_training)
    return out


class ChatStats(Callback):
    """Logs ``data/overlong_truncated`` and ``data/overlong_dropped``: conversations
    longer than ``data.seq_len`` so far (summed from what every row reports, so
    exact over dataloader workers)."""

    def __init__(self):
        self.totals = {"truncated": 0, "dropped": 0}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        for k in self.totals:
            if k in batch:  # each rank sees its block of the global batch: sum them
                self.totals[k] += int(trainer.strategy.reduce(batch[k].sum(), reduce_op="sum"))
                pl_module.log(f"data/overlong_{k}", float(self.totals[k]), reduce_fx="max")

    def state_dict(self) -> dict:  # a resumed run goes on counting (lp.training.checkpointing)
        return dict(self.totals)

    def load_state_dict(self, state: dict) -> None:
        self.totals.update(state)
