"""Any OpenAI-compatible chat endpoint: a fleet of `vllm serve` behind a load balancer, or a hosted API.

The pipeline gives this backend the same batches (and the pipelined flow the same submit/poll calls) as the
local vLLM engine; here each request becomes one POST /chat/completions, at most `concurrency` in flight.
A 429, a 5xx, a timeout or a refused connection (a server restarting) is retried with exponential backoff and
jitter (Retry-After honoured, capped at backoff_max), up to `max_retries`; anything else (a 400, a wrong model name, a bad key) fails
at once with the server's message. Every finished request is committed to the run's ledger as it arrives, so
a run that gives up resumes from where it stopped. Ledger keys use the model name, not the URL: a run begun
on a local engine can be finished on a server of the same model, and the other way round.
"""
from __future__ import annotations

import os
import random
import threading
import queue
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import ClassVar, Literal

from pydantic import Field

from ..config import BackendCfg, JudgeCfg, ModelCfg
from ..errors import Resumable, UserError
from . import Conversation, Generation, OnDone, Params, choice_probs, generate_queued, register

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class BackendError(Resumable):
    """The endpoint failed a request for good; finished requests are in the ledger (the entry point prints the
    command that resumes)."""


class OpenAICfg(BackendCfg):
    """backend=openai (conf/backend/openai.yaml): any OpenAI-compatible endpoint."""
    kind: Literal["openai"] = "openai"
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str | None = "OPENAI_API_KEY"
    served_model: str | None = None
    concurrency: int = Field(64, gt=0)
    max_retries: int = Field(8, ge=0)
    timeout: float = Field(600.0, gt=0)
    backoff: float = Field(1.0, ge=0)
    backoff_max: float = Field(60.0, ge=0)
    choices_via: Literal["structured_outputs", "guided_choice", "none"] = "structured_outputs"
    count_tokens: Literal["tokenizer", "none"] = "tokenizer"
    extra_body: dict = Field(default_factory=dict)
    max_model_len: int | None = Field(None, gt=0)
    client: ClassVar[bool] = True

    def options(self, model: ModelCfg, seed: int) -> dict:
        return dict(base_url=self.base_url, max_model_len=self.max_model_len or model.max_model_len,
                    served_model=self.served_model, api_key_env=self.api_key_env, concurrency=self.concurrency,
                    max_retries=self.max_retries, timeout=self.timeout, backoff=self.backoff,
                    backoff_max=self.backoff_max, choices_via=self.choices_via, count_tokens=self.count_tokens,
                    extra_body=self.extra_body, trust_remote_code=model.trust_remote_code)

    def judge_options(self, judge: JudgeCfg, seed: int) -> dict:
        # the judge's own endpoint and name: the generator's served_model and base_url are the generator's
        return self.options(judge.model, seed) | dict(base_url=judge.base_url or self.base_url,
                                                      served_model=judge.served_model or judge.model.name,
                                                      max_model_len=judge.model.max_model_len)

    def needs_checkpoint(self) -> bool:
        return self.count_tokens == "tokenizer"  # its tokenizer counts the context; none: the server checks

    def check_judge(self, judge: JudgeCfg, seed: int) -> None:
        o = self.judge_options(judge, seed)
        check_served(o["base_url"], o["served_model"], self.api_key_env, "judge")


@register("openai", OpenAICfg)
class OpenAIBackend:
    name = "openai"

    def __init__(self, model_path: str, model_name: str, *, base_url: str, max_model_len: int,
                 served_model: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                 concurrency: int = 64, max_retries: int = 8, timeout: float = 600.0, backoff: float = 1.0,
                 backoff_max: float = 60.0, choices_via: str = "structured_outputs", count_tokens: str = "tokenizer",
                 extra_body: dict | None = None, trust_remote_code: bool = False):
        import httpx

        self.model, self.max_model_len = model_name, max_model_len
        self.served = served_model or model_name
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.max_retries, self.backoff, self.backoff_max = max_retries, backoff, backoff_max
        self.choices_via, self.extra = choices_via, dict(extra_body or {})
        key = os.environ.get(api_key_env) if api_key_env else None
        self.client = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0),
                                   headers={"Authorization": f"Bearer {key}"} if key else {},
                                   limits=httpx.Limits(max_connections=concurrency,
                                                       max_keepalive_connections=concurrency))
        self.pool = DaemonPool(concurrency)
        self.futures: dict[Future, int] = {}
        self.next, self.retries = 0, 0
        self.failed: BaseException | None = None  # a request failed for good: raised once the answers in hand are out
        self.lock = threading.Lock()
        self.stop = threading.Event()  # set by close(): retry loops give up at once, so exit never waits on them
        self.tok = None
        if count_tokens == "tokenizer":
            # the context check needs the prompt length before sending; only the tokenizer files are read
            from transformers import AutoTokenizer
            self.tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)

    # --- the Backend protocol ---------------------------------------------------------------------------
    def count_tokens(self, convs: list[Conversation]) -> list[int]:
        if self.tok is None:
            return [0] * len(convs)  # count_tokens=none: the server is the judge of its context
        # return_dict=False: transformers 5 returns a BatchEncoding by default, whose len() is its 2 keys
        return [len(self.tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False))
                for c in convs]

    def submit(self, convs: list[Conversation], params: list[Params]) -> list[int]:
        handles = []
        for conv, p in zip(convs, params):
            h, self.next = self.next, self.next + 1
            self.futures[self.pool.submit(self._request, conv, p)] = h
            handles.append(h)
        return handles

    def poll(self) -> list[tuple[int, Generation]]:
        """Wait (briefly) for finished requests; a request that failed for good raises here."""
        if not self.futures:
            return []
        if self.failed is not None and not any(f.done() and not f.exception() for f in self.futures):
            raise self.failed  # the run stops; every answer that came back before is in the ledger
        done, _ = wait(list(self.futures), timeout=0.5, return_when=FIRST_COMPLETED)
        out = []
        for f in done:
            if f.exception() is not None:
                self.failed = self.failed or f.exception()
                self.futures.pop(f)
                continue
            out.append((self.futures.pop(f), f.result()))
        if not out and self.failed is not None:
            raise self.failed
        return out

    def generate(self, convs: list[Conversation], params: list[Params], on_done: OnDone | None = None) -> list[Generation]:
        return generate_queued(self, convs, params, on_done)

    def close(self) -> None:
        self.stop.set()
        self.pool.shutdown()
        self.client.close()

    # --- one request ------------------------------------------------------------------------------------
    def body(self, conv: Conversation, p: Params) -> dict:
        b = {"model": self.served, "messages": conv, "temperature": p.temperature, "top_p": p.top_p,
             "max_tokens": p.max_tokens, "seed": p.seed, "n": 1, **self.extra}
        if p.choices:
            if self.choices_via == "structured_outputs":      # vLLM >= 0.11
                b["structured_outputs"] = {"choice": list(p.choices)}
            elif self.choices_via == "guided_choice":          # older vLLM servers
                b["guided_choice"] = list(p.choices)
            # "none": a hosted API without constraints; the judge parses the text (unparsed when off-list)
            b["logprobs"], b["top_logprobs"] = True, 20  # the first token's top log-probs: P(YES) for the gate
        return b

    def _request(self, conv: Conversation, p: Params) -> Generation:
        import httpx

        body = self.body(conv, p)
        for attempt in range(self.max_retries + 1):
            if self.stop.is_set():
                raise BackendError("backend: closed")
            wait_s = None
            try:
                r = self.client.post(self.url, json=body)
                if r.status_code == 200:
                    return self._parse(r.json(), p.choices)
                if r.status_code not in RETRY_STATUS:
                    raise BackendError(f"backend: {self.url} answered {r.status_code}: {_message(r)}")
                why = f"{r.status_code} {_message(r)}"
                ra = r.headers.get("retry-after")
                # capped: a server (or a proxy) asking for an hour must not stall the run past backoff_max
                wait_s = min(float(ra), self.backoff_max) if ra and ra.replace(".", "", 1).isdigit() else None
            except httpx.TransportError as e:  # refused, reset, timed out: the server may be restarting
                why = f"{type(e).__name__}: {e}"
            if attempt == self.max_retries:
                raise BackendError(f"backend: {self.url} failed {attempt + 1} times (last: {why})")
            with self.lock:
                self.retries += 1
            self.stop.wait(wait_s if wait_s is not None else
                           min(self.backoff_max, self.backoff * 2 ** attempt) * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    @staticmethod
    def _parse(data: dict, choices: tuple[str, ...] | None = None) -> Generation:
        ch = data["choices"][0]
        first = ((ch.get("logprobs") or {}).get("content") or [None])[0]
        probs = choice_probs({t["token"]: t["logprob"] for t in first.get("top_logprobs") or []}, choices) \
            if choices and first else None
        usage = data.get("usage") or {}
        cached = ((usage.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0
        return Generation(text=ch["message"].get("content") or "",
                          finish_reason="length" if ch.get("finish_reason") == "length" else "stop",
                          prompt_tokens=usage.get("prompt_tokens", 0),
                          completion_tokens=usage.get("completion_tokens", 0), cached_tokens=cached, probs=probs)


class DaemonPool:
    """ThreadPoolExecutor's submit() on daemon threads. The stdlib pool's threads are joined at interpreter exit,
    so one request stuck reading from a server that stopped answering (up to `timeout`, 10 minutes by default)
    held a finished or failed run's process open; daemon threads end with it."""

    def __init__(self, workers: int):
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.workers = workers
        for i in range(workers):
            threading.Thread(target=self._work, name=f"cai_gen-openai-{i}", daemon=True).start()

    def submit(self, fn, *args) -> Future:
        f: Future = Future()
        self.q.put((f, fn, args))
        return f

    def _work(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            f, fn, args = item
            if not f.set_running_or_notify_cancel():
                continue
            try:
                f.set_result(fn(*args))
            except BaseException as e:
                f.set_exception(e)

    def shutdown(self) -> None:
        """Cancel what has not started; threads in a request end when it does (or with the process)."""
        while True:
            try:
                item = self.q.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in range(self.workers):
            self.q.put(None)  # each idle worker takes one and ends


def check_served(base_url: str, served: str, api_key_env: str | None, field: str) -> None:
    """Pre-flight: the endpoint answers GET /models and serves `served`. A typo'd model name or URL for a
    judge that would only be asked after hours of generation fails the run at its start, in one line."""
    import httpx

    key = os.environ.get(api_key_env) if api_key_env else None
    url = base_url.rstrip("/") + "/models"
    try:
        r = httpx.get(url, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=10)
    except httpx.HTTPError as e:
        raise UserError(f"{field}: {url} unreachable ({type(e).__name__}); start the server first") from None
    if r.status_code != 200:
        raise UserError(f"{field}: {url} answered {r.status_code}: {_message(r)}")
    try:
        names = [m.get("id") for m in r.json().get("data", [])]
    except (ValueError, AttributeError):
        return  # not a model list: a hosted API may not have one; the first request will say
    if served not in names:
        raise UserError(f"{field}: {base_url} does not serve {served!r} (it serves: {', '.join(map(str, names[:5]))})")


def _message(r) -> str:
    try:
        err = r.json()
        err = err.get("error", err) if isinstance(err, dict) else err
        msg = err.get("message", err) if isinstance(err, dict) else err
    except ValueError:
        msg = r.text
    return " ".join(str(msg).split())[:300]
