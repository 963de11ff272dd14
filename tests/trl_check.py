"""Train one step of each TRL trainer on its split of a run directory's output, loaded exactly as a user would:
DPO and ORPO on preferences/train_prefs, KTO on kto/train, SFT on preferences/train_sft."""
from __future__ import annotations

import math


def train_one_step(run_dir: str, model_dir: str, out_dir: str, which: str) -> float:
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ds = load_from_disk(f"{run_dir}/preferences")["train_sft" if which == "sft" else "train_prefs"]
    if which == "kto":
        ds = load_from_disk(f"{run_dir}/kto")["train"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    common = dict(output_dir=out_dir, max_steps=1, per_device_train_batch_size=2, gradient_accumulation_steps=1,
                  learning_rate=1e-6, use_cpu=True, report_to="none", logging_steps=1, save_strategy="no",
                  max_length=512)
    if which == "dpo":
        from trl import DPOConfig, DPOTrainer
        trainer = DPOTrainer(model=model, args=DPOConfig(**common), train_dataset=ds, processing_class=tok)
    elif which == "kto":
        from trl import KTOConfig, KTOTrainer
        trainer = KTOTrainer(model=model, args=KTOConfig(**common), train_dataset=ds, processing_class=tok)
    elif which == "sft":
        from trl import SFTConfig, SFTTrainer
        trainer = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=ds, processing_class=tok)
    else:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
        trainer = ORPOTrainer(model=model, args=ORPOConfig(**common), train_dataset=ds, processing_class=tok)
    result = trainer.train()
    assert result.global_step == 1
    loss = result.training_loss
    assert math.isfinite(loss)
    return loss
