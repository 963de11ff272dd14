"""Plain transformers backend: batched generate with left padding, for machines without vLLM (and GPUs
where a user prefers HF). Same Protocol, same outputs; much slower than vLLM."""
from __future__ import annotations

from . import Conversation, Generation, OnDone, Params


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
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
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

    def generate(self, convs: list[Conversation], params: list[Params], on_done: OnDone | None = None) -> list[Generation]:
        torch = self.torch
        texts = self._texts(convs)
        results: dict[int, Generation] = {}
        for j, p in enumerate(params):
            if p.choices:
                results[j] = self._choose(texts[j], p.choices)
                if on_done:
                    on_done(j, results[j])
        # one generate() call needs one temperature/top_p/max_tokens: group requests that share them
        key = lambda j: (params[j].temperature, params[j].top_p, params[j].max_tokens)  # noqa: E731
        order = sorted((j for j in range(len(convs)) if not params[j].choices), key=key)
        batches: list[list[int]] = []
        for j in order:
            if batches and len(batches[-1]) < self.batch_size and key(batches[-1][0]) == key(j):
                batches[-1].append(j)
            else:
                batches.append([j])
        for batch in batches:
            p = params[batch[0]]
            enc = self.tok([texts[j] for j in batch], return_tensors="pt", padding=True,
                           add_special_tokens=False).to(self.device)
            torch.manual_seed(p.seed)
            with torch.no_grad():
                gen = self.lm.generate(**enc, max_new_tokens=p.max_tokens, do_sample=p.temperature > 0,
                                       temperature=p.temperature if p.temperature > 0 else None,
                                       top_p=p.top_p if p.temperature > 0 else None,
                                       pad_token_id=self.tok.pad_token_id)
            n_in = enc["input_ids"].shape[1]
            for row, j in enumerate(batch):
                new = gen[row, n_in:]
                eos = (new == self.tok.eos_token_id).nonzero()
                n = int(eos[0]) if len(eos) else len(new)
                ids = new[:n]
                g = Generation(self.tok.decode(ids, skip_special_tokens=True),
                               "stop" if len(eos) else "length",
                               int(enc["attention_mask"][row].sum()), n)
                results[j] = g
                if on_done:
                    on_done(j, g)
        return [results[j] for j in range(len(convs))]

    def close(self) -> None:
        self.lm = None
