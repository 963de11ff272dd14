"""Plain transformers backend: batched generate with left padding, for machines without vLLM (and GPUs
where a user prefers HF). Same Protocol, same outputs; much slower than vLLM. Requests with different
temperature, top-p, max_tokens and seed share one generate() call: each row samples with its own (_RowSampler)
and stops at its own limit (_RowLimit), or where it starts looping when it asks for loop_stop (_RowLoop)."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ..config import BackendCfg, ModelCfg
from . import Conversation, Generation, OnDone, Params, loop_end, register


class HFCfg(BackendCfg):
    """backend=transformers (conf/backend/transformers.yaml)."""
    kind: Literal["transformers"] = "transformers"
    batch_size: int = Field(16, gt=0)
    device: str = "auto"
    in_process: ClassVar[bool] = True
    ray: ClassVar[bool] = False

    def options(self, model: ModelCfg, seed: int) -> dict:
        return dict(dtype=model.dtype, max_model_len=model.max_model_len, batch_size=self.batch_size,
                    device=self.device, trust_remote_code=model.trust_remote_code)


@register("transformers", HFCfg)
class HFBackend:
    name = "transformers"
    queued = False  # no submit/poll: the staged schedule runs it

    def __init__(self, model_path: str, model_name: str, *, dtype: str = "auto", max_model_len: int = 4096,
                 batch_size: int = 16, device: str = "auto", trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.tok.padding_side = "left"  # decoder-only batching: pad on the left so generation continues the text
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        from ..models import engine_dtype

        self.dtype = engine_dtype(dtype, self.device == "cpu")
        torch_dtype = getattr(torch, self.dtype)
        self.lm = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype,
                                                       trust_remote_code=trust_remote_code).to(self.device).eval()
        self.model, self.max_model_len, self.batch_size = model_name, max_model_len, batch_size

    def _texts(self, convs: list[Conversation]) -> list[str]:
        return [self.tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in convs]

    def count_tokens(self, convs: list[Conversation]) -> list[int]:
        return [len(x) for x in self.tok(self._texts(convs), add_special_tokens=False)["input_ids"]]

    def _choose(self, text: str, choices: tuple[str, ...]) -> Generation:
        """Constrained answer without a grammar engine: the choice with the highest total log-probability
        after the prompt (exact for a finite set of answers, unlike parsing free text)."""
        torch = self.torch
        prompt = self.tok(text, add_special_tokens=False)["input_ids"]
        outs = [self.tok(c, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id] for c in choices]
        width = len(prompt) + max(len(o) for o in outs)
        ids = torch.full((len(outs), width), self.tok.pad_token_id)
        mask = torch.zeros_like(ids)
        for k, o in enumerate(outs):
            ids[k, : len(prompt) + len(o)] = torch.tensor(prompt + o)
            mask[k, : len(prompt) + len(o)] = 1
        with torch.no_grad():
            logp = self.lm(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.log_softmax(-1)
        scores = [sum(float(logp[k, len(prompt) + t - 1, tok]) for t, tok in enumerate(o)) for k, o in enumerate(outs)]
        best = max(range(len(choices)), key=scores.__getitem__)
        probs = torch.tensor(scores).softmax(0).tolist()  # each choice's share of the choices' total likelihood
        return Generation(choices[best], "stop", len(prompt), len(outs[best]),
                          probs={c: round(q, 6) for c, q in zip(choices, probs)})

    def _eos_ids(self) -> set[int]:
        """Every id that ends an answer: the tokenizer's EOS and the generation config's (which may list several,
        e.g. <|im_end|> and <|endoftext|>); generate() stops on the latter, so decoding must cut on all of them."""
        ids = self.lm.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
        return ids | {self.tok.eos_token_id}

    def _batches(self, texts: list[str], todo: list[int]) -> list[list[int]]:
        """Requests by prompt length, cut into batches of batch_size: neighbours pad little. Sampling params do
        not split batches: each row samples with its own temperature, top-p, limit and seed (_RowSampler)."""
        lens = self.tok([texts[j] for j in todo], add_special_tokens=False)["input_ids"]
        order = [j for _, j in sorted(zip(map(len, lens), todo))]
        return [order[k: k + self.batch_size] for k in range(0, len(order), self.batch_size)]

    def _generate_batch(self, texts: list[str], params: list[Params]) -> list[Generation]:
        torch = self.torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        n_in = enc["input_ids"].shape[1]
        limits = [p.max_tokens for p in params]
        eos = self._eos_ids()
        stops = [_RowLimit(torch, n_in, limits, self.device)]
        loops = _RowLoop(torch, self.tok, n_in, params, eos, self.device)
        if loops.times:
            stops.append(loops)
        # do_sample=False: generate() takes the argmax of what _RowSampler returns, which for a sampled row is
        # the one token it drew with that row's generator, and for a greedy row the untouched logits
        with torch.no_grad():
            out = self.lm.generate(**enc, max_new_tokens=max(limits), do_sample=False,
                                   temperature=None, top_p=None, top_k=None, pad_token_id=self.tok.pad_token_id,
                                   logits_processor=LogitsProcessorList([_RowSampler(torch, params, self.device)]),
                                   stopping_criteria=StoppingCriteriaList(stops))
        gens = []
        for row, limit in enumerate(limits):
            prompt_tokens = int(enc["attention_mask"][row].sum())
            if row in loops.cut:  # ended by loop_stop: the text up to the sentence said loop_stop times
                new = out[row, n_in: n_in + loops.cut[row]].tolist()
                text = self.tok.decode(new, skip_special_tokens=True)
                gens.append(Generation(text[:loop_end(text, params[row].loop_stop)], "loop", prompt_tokens, len(new)))
                continue
            new = out[row, n_in: n_in + limit].tolist()  # past its own limit a row only holds padding
            n = next((k for k, t in enumerate(new) if t in eos), None)
            gens.append(Generation(self.tok.decode(new[:n], skip_special_tokens=True),
                                   "length" if n is None else "stop", prompt_tokens, len(new) if n is None else n))
        return gens

    def generate(self, convs: list[Conversation], params: list[Params], on_done: OnDone | None = None) -> list[Generation]:
        texts = self._texts(convs)
        results: dict[int, Generation] = {}

        def done(j: int, g: Generation) -> None:
            results[j] = g
            if on_done:
                on_done(j, g)

        for j, p in enumerate(params):
            if p.choices:
                done(j, self._choose(texts[j], p.choices))
        todo = [j for j, p in enumerate(params) if not p.choices]
        for batch in self._batches(texts, todo) if todo else []:
            for j, g in zip(batch, self._generate_batch([texts[j] for j in batch], [params[j] for j in batch])):
                done(j, g)
        return [results[j] for j in range(len(convs))]

    def close(self) -> None:
        self.lm = None


class _RowSampler:
    """Logits processor that samples every row itself, with that row's temperature, top-p and torch.Generator
    (seeded from the request): a request draws the same random numbers whether it runs alone or in any batch,
    which one global manual_seed per generate() cannot give. Greedy rows (temperature 0) pass through."""

    def __init__(self, torch, params: list[Params], device: str):
        self.torch = torch
        rows = [k for k, p in enumerate(params) if p.temperature > 0]
        self.rows = torch.tensor(rows, dtype=torch.long, device=device)
        self.temp = torch.tensor([params[k].temperature for k in rows], device=device)[:, None]
        top_p = torch.tensor([params[k].top_p for k in rows], device=device)
        # which rows sample from the whole distribution and which from a nucleus is known up front: no
        # device-to-host sync per step to find out
        self.whole = (top_p >= 1).nonzero()[:, 0]
        self.nucleus = (top_p < 1).nonzero()[:, 0]
        self.top_p = top_p[self.nucleus]
        self.gens = [torch.Generator(device=device).manual_seed(params[k].seed) for k in rows]

    def __call__(self, input_ids, scores):
        if not self.gens:
            return scores
        torch = self.torch
        probs = (scores[self.rows] / self.temp).softmax(-1)
        # one uniform per row and step from the row's own generator, whatever the batch around it
        u = torch.cat([torch.rand(1, generator=g, device=probs.device) for g in self.gens])
        pick = torch.empty(len(self.gens), dtype=torch.long, device=probs.device)
        if len(self.whole):
            pick[self.whole] = _inverse_cdf(torch, probs[self.whole], u[self.whole])
        if len(self.nucleus):
            pick[self.nucleus] = _nucleus_draw(torch, probs[self.nucleus], self.top_p, u[self.nucleus])
        out = scores.clone()
        out[self.rows] = float("-inf")
        out[self.rows, pick] = 0.0
        return out


# Most rows' top-p nucleus fits in this many tokens (SmolLM2 at T 0.6-1, top-p 0.9-1: 91% of row-steps): topk
# over it is far cheaper than sorting the 49k vocab, which on the CPU cost about as much as the decode step
_NUCLEUS_K = 1024


def _nucleus_draw(torch, probs, top_p, u):
    """Each row's token from its top-p nucleus (the most likely tokens whose mass first reaches top_p)."""
    vals, idx = probs.topk(min(_NUCLEUS_K, probs.shape[-1]))
    pick = _sorted_draw(torch, vals, idx, top_p, u)
    wide = (vals.sum(-1) < top_p).nonzero()[:, 0]  # flat rows whose nucleus is wider: sort their whole vocab
    if len(wide):
        pick[wide] = _sorted_draw(torch, *probs[wide].sort(-1, descending=True), top_p[wide], u[wide])
    return pick


def _sorted_draw(torch, vals, idx, top_p, u):
    """Draw from probabilities sorted high to low (vals, with their token ids idx), cut to the top-p nucleus."""
    before = vals.cumsum(-1) - vals  # mass of the more likely tokens: the top token always stays
    vals = vals.masked_fill(before >= top_p[:, None], 0.0)
    return idx.gather(-1, _inverse_cdf(torch, vals, u)[:, None])[:, 0]


def _inverse_cdf(torch, weights, u):
    """Index k per row with cum[k-1] <= u * total < cum[k]: a draw with probability weight / total. right=True
    never lands on a zero-weight token (its cum equals the one before)."""
    cum = weights.cumsum(-1)
    pos = torch.searchsorted(cum, (u * cum[:, -1])[:, None], right=True)
    return pos[:, 0].clamp(max=weights.shape[-1] - 1)


class _RowLoop:
    """Stopping criterion for rows with loop_stop: every 16 new tokens (as the vLLM backend checks), a row still
    running ends once loop_end finds a sentence said loop_stop times; `cut[row]` = its tokens at that point."""

    def __init__(self, torch, tok, n_in: int, params: list[Params], eos: set[int], device: str):
        self.tok, self.n_in, self.eos = tok, n_in, eos
        self.limits = [p.max_tokens for p in params]
        self.times = {row: p.loop_stop for row, p in enumerate(params) if p.loop_stop}
        self.cut: dict[int, int] = {}
        self.done = torch.zeros(len(params), dtype=torch.bool, device=device)

    def __call__(self, input_ids, scores, **kwargs):
        n = input_ids.shape[1] - self.n_in
        if n % 16:
            return self.done
        for row, times in self.times.items():
            if row in self.cut or n >= self.limits[row]:
                continue  # already ended here, or at its own limit (the text is whole: nothing to cut)
            new = input_ids[row, self.n_in:].tolist()
            if self.eos.intersection(new):
                continue  # it ended on its own
            if loop_end(self.tok.decode(new, skip_special_tokens=True), times) is not None:
                self.cut[row], self.done[row] = n, True
        return self.done


class _RowLimit:
    """Stopping criterion: each row ends at its own max_tokens (generate() then pads it while others go on)."""

    def __init__(self, torch, n_in: int, limits: list[int], device: str):
        self.n_in, self.limits = n_in, torch.tensor(limits, device=device)

    def __call__(self, input_ids, scores, **kwargs):
        return (input_ids.shape[1] - self.n_in) >= self.limits
