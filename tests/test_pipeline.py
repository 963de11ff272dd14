"""Pipeline logic on the deterministic fake backend (fast). Behaviour on the real engine: test_e2e_vllm.py."""
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from cai_gen import pipeline
from cai_gen.backends.fake import FakeBackend
from cai_gen.progress import Tracker

from .conftest import ONE, ROOT, make_cfg


def run(tmp_path: Path, *overrides: str, mode: str = "good"):
    cfg = make_cfg("backend=fake", ONE, *overrides)
    be = FakeBackend("fake", cfg.model.name, mode=mode, max_model_len=cfg.backend.max_model_len or 2048)
    summary = pipeline.run(cfg, tmp_path, backend=be)
    return cfg, be, summary


def jl(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines()]


def test_outputs_are_trl_conversational_with_provenance(tmp_path):
    cfg, be, s = run(tmp_path, "limit=4", "samples=3")
    prefs = jl(tmp_path / "preferences.jsonl")
    assert s["rows"] == 12 and s["kept"] == len(prefs) == 12
    for r in prefs:
        assert [m["role"] for m in r["prompt"]] == ["user"]
        assert r["chosen"][0]["role"] == r["rejected"][0]["role"] == "assistant"
        assert r["chosen"][0]["content"] != r["rejected"][0]["content"]
        assert "messages" not in r and "completion" not in r
        assert r["constitution"].startswith("customer_service@1#") and r["model"] == cfg.model.name
        assert len(r["principle_ids"]) == len(r["critiques"]) == 1 and r["domain"] and r["created_at"]
        assert set(r["sampling"]) >= {"temperature", "top_p", "seed"}
    assert len({r["id"] for r in prefs}) == 12
    kto = jl(tmp_path / "kto.jsonl")
    assert len(kto) == 24 and {k["label"] for k in kto} == {True, False} and all("completion" in k for k in kto)
    trace = jl(tmp_path / "trace.jsonl")
    assert [st["stage"] for st in trace[0]["stages"]] == ["respond", "critique", "gate", "revise"]
    assert trace[0]["stages"][1]["few_shot_turns"] == 12  # 2 few-shot examples x 6 turns, not copied per row
    import datasets
    d = datasets.load_from_disk(str(tmp_path / "preferences"))
    assert set(d) == {"train_prefs", "test_prefs", "train_sft", "test_sft"}
    ds = d["train_prefs"]
    assert len(ds) + len(d["test_prefs"]) == 12 and {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    assert "messages" not in ds.column_names and "messages" in d["train_sft"].column_names


def test_each_stage_is_one_batched_engine_call(tmp_path):
    _, be, _ = run(tmp_path, "limit=5", "samples=2", "rounds=2", "pipelined=false")
    assert be.calls == [10] * 7  # respond, critique r1, gate r1, revise r1, critique r2, gate r2, revise r2


def test_pipelined_schedule_overlaps_stages_and_gives_the_same_files(tmp_path):
    _, staged, _ = run(tmp_path / "a", "limit=5", "samples=2", "rounds=2", "pipelined=false")
    _, piped, _ = run(tmp_path / "b", "limit=5", "samples=2", "rounds=2", mode="echo")
    _, piped, s = run(tmp_path / "c", "limit=5", "samples=2", "rounds=2")
    # the fake engine finishes half its queue per step: the first critiques are queued while answers are pending
    assert piped.calls[0] == 10 and len(piped.calls) > 7 and sum(piped.calls) == 70
    strip = lambda rows: [{k: v for k, v in r.items() if k != "created_at"} for r in rows]  # noqa: E731
    for f in ("preferences.jsonl", "rejected.jsonl", "trace.jsonl"):
        assert strip(jl(tmp_path / "a" / f)) == strip(jl(tmp_path / "c" / f)), f
    assert s["stages"]["revise r2"]["rows"] == s["stages"]["revise r2"]["requests"] == 10  # best-of-1: one each
    assert s["generation_seconds"] >= 0
    # rows that fail a check leave the flow at that stage, with the same reasons as the staged schedule
    run(tmp_path / "d", "limit=5", "samples=2", "rounds=2", "pipelined=false", mode="echo")
    echo = strip(jl(tmp_path / "b" / "rejected.jsonl"))
    assert len(echo) == 10 and echo == strip(jl(tmp_path / "d" / "rejected.jsonl"))


def test_schedules_resume_each_other(tmp_path):
    run(tmp_path, "limit=4", "pipelined=false")
    _, be, _ = run(tmp_path, "limit=4")
    assert be.calls == []  # same requests, same ledger keys


def test_samples_get_distinct_seeded_sampling(tmp_path):
    run(tmp_path / "a", "limit=3", "samples=4", "seed=1")
    run(tmp_path / "b", "limit=3", "samples=4", "seed=1")
    run(tmp_path / "c", "limit=3", "samples=4", "seed=2")
    a, b, c = (jl(tmp_path / x / "preferences.jsonl") for x in "abc")
    key = lambda rows: [(r["id"], r["principle_ids"], r["sampling"]) for r in rows]  # noqa: E731
    assert key(a) == key(b) and key(a) != key(c)
    temps = [r["sampling"]["temperature"] for r in a]
    assert len(set(temps)) == len(temps) and all(0.6 <= t <= 1.0 for t in temps)


def test_rounds_use_a_new_principle_each_round(tmp_path):
    run(tmp_path, "limit=4", "rounds=3", "samples=1")
    for r in jl(tmp_path / "preferences.jsonl"):
        assert len(r["critiques"]) == 3 and len(set(r["principle_ids"])) == 3


def test_echoed_critiques_are_dropped_with_reason(tmp_path):
    _, _, s = run(tmp_path, "limit=3", mode="echo")
    assert s["kept"] == 0 and sum(s["reasons"].values()) == 6
    assert set(s["reasons"]) <= {"revision_echoes_critique", "revision_is_meta"}
    rej = jl(tmp_path / "rejected.jsonl")
    assert len(rej) == 6 and all(r["stage"] == "revise r1" and r["revision"] for r in rej)


def test_prefaces_are_stripped_and_flagged(tmp_path):
    _, _, s = run(tmp_path, "limit=3", mode="preface")
    prefs = jl(tmp_path / "preferences.jsonl")
    assert s["kept"] == 6 and s["flags"] == {"preface_stripped": 6}
    assert all(r["chosen"][0]["content"].startswith("Thanks for reaching out") for r in prefs)
    _, _, s = run(tmp_path / "nostrip", "limit=3", "filters.strip_preface=false", mode="preface")
    assert s["kept"] == 0 and s["reasons"] == {"revision_preface": 6}


def test_truncation_and_context_limits_drop_with_reasons(tmp_path):
    _, _, s = run(tmp_path, "limit=2", "sampling.max_tokens.respond=5")
    assert s["reasons"] == {"truncated_original": 4}
    _, _, s = run(tmp_path / "b", "limit=2", "sampling.max_tokens.respond=5", "filters.truncated_original=keep", "filters.truncated_revision=keep")
    assert s["kept"] == 4
    _, _, s = run(tmp_path / "c", "limit=2", "backend.max_model_len=300")  # room to answer, not for few-shot turns
    assert s["reasons"] == {"context_overflow": 4} and s["kept"] == 0
    assert all(r["stage"] == "critique" for r in jl(tmp_path / "c" / "rejected.jsonl"))


def test_long_prompt_is_skipped_and_run_continues(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "long", "prompt": "word " * 3000}) + "\n" + json.dumps({"id": "ok", "prompt": "hi?"}) + "\n")
    _, _, s = run(tmp_path / "out", f"prompts.path={f}", "samples=1")
    assert s["reasons"] == {"prompt_too_long": 1} and s["kept"] == 1


def test_prompt_text_is_data_not_a_template(tmp_path):
    f = tmp_path / "p.jsonl"
    text = "What is {{ 7*7 }}? {% for x in y %}loop{% endfor %} {{ config.__class__ }}"
    f.write_text(json.dumps({"id": "j", "prompt": text, "system": "{{ system }}"}) + "\n")
    run(tmp_path / "out", f"prompts.path={f}", "samples=1")
    r = jl(tmp_path / "out" / "preferences.jsonl")[0]
    assert r["prompt"] == [{"role": "system", "content": "{{ system }}"}, {"role": "user", "content": text}]
    stages = jl(tmp_path / "out" / "trace.jsonl")[0]["stages"]
    assert stages[1]["input"][1]["content"] == text


def test_cli_end_to_end_on_fake_backend(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "cai_gen", "backend=fake", "limit=3", f"hydra.run.dir={out}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for f in ("preferences.jsonl", "kto.jsonl", "trace.jsonl", "rejected.jsonl", "summary.json", "README.md",
              "preferences/dataset_dict.json", "preferences/train_prefs/dataset_info.json", "kto/dataset_dict.json", ".hydra/config.yaml"):
        assert (out / f).exists(), f
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 3 and summary["kept"] == 3 and "pairs kept" in r.stderr


def test_cli_multirun_sweeps(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cai_gen", "-m", "backend=fake", "limit=1", "samples=1",
                        "constitution=customer_service,helpful_honest", f"hydra.sweep.dir={tmp_path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    refs = sorted(jl(p)[0]["constitution"].split("@")[0] for p in tmp_path.glob("*/preferences.jsonl"))
    assert refs == ["customer_service", "helpful_honest"]


def test_chunks_give_the_same_rows_in_smaller_batches(tmp_path):
    _, whole, _ = run(tmp_path / "a", "limit=5", "samples=2", "pipelined=false")
    _, chunked, _ = run(tmp_path / "b", "limit=5", "samples=2", "chunk_size=4", "pipelined=false")
    assert whole.calls == [10] * 4 and chunked.calls == [4] * 8 + [2] * 4
    strip = lambda p: [{k: v for k, v in r.items() if k != "created_at"} for r in jl(p / "preferences.jsonl")]  # noqa: E731
    assert strip(tmp_path / "a") == strip(tmp_path / "b")


CONV = [{"role": "system", "content": "You are the store's support assistant."},
        {"role": "user", "content": "My order 1234 has not arrived."},
        {"role": "assistant", "content": "Sorry to hear that. Do you have the tracking number?"},
        {"role": "user", "content": "It says delivered but nothing is here."}]


def multi_turn_run(tmp_path: Path, *overrides: str):
    f = tmp_path / "mt.jsonl"
    f.write_text(json.dumps({"messages": CONV}) + "\n" + json.dumps({"messages": CONV[1:], "id": "no-sys"}) + "\n")
    return run(tmp_path / "out", f"prompts.path={f}", "judge=self", *overrides)


def test_multi_turn_prompts_go_whole_to_every_stage_and_out_as_the_prompt_column(tmp_path):
    _, be, s = multi_turn_run(tmp_path)
    prefs = jl(tmp_path / "out" / "preferences.jsonl")
    assert s["kept"] == len(prefs) == 4
    for p in prefs:  # TRL's explicit-prompt conversational format, with the whole multi-turn context
        assert p["prompt"] == (CONV[1:] if p["id"].startswith("no-sys-") else CONV), p["id"]
    trace = jl(tmp_path / "out" / "trace.jsonl")
    earlier = CONV[2]["content"]
    for t in trace:
        for st in t["stages"]:  # respond, critique, gate, revise and both judge orders all saw the earlier turns
            assert any(earlier in m["content"] for m in st["input"]), (t["id"], st["stage"])
    sft = jl(tmp_path / "out" / "sft.jsonl")
    assert all(r["messages"][:-1] in (CONV, CONV[1:]) and r["messages"][-1]["role"] == "assistant" for r in sft)


@pytest.mark.slow
def test_multi_turn_output_trains_one_dpo_step(tmp_path, default_model_dir):
    from .trl_check import train_one_step

    multi_turn_run(tmp_path, "output.test_size=0")
    assert train_one_step(str(tmp_path / "out"), default_model_dir, str(tmp_path / "trl"), "dpo") > 0


def test_rows_are_written_chunk_by_chunk_and_the_files_equal_an_unchunked_run(tmp_path):
    """Streaming: a chunk's rows are in work/parts before the next chunk generates (so they can be released),
    the final files appear only at the end, and every file equals a one-chunk run's (created_at aside)."""
    seen = []

    class Watch(FakeBackend):
        def generate(self, convs, params, on_done=None):
            part = tmp_path / "b" / "work" / "parts" / "preferences.jsonl"
            seen.append((len(part.read_text().splitlines()) if part.exists() else None,
                         (tmp_path / "b" / "preferences.jsonl").exists()))
            return super().generate(convs, params, on_done)

    run(tmp_path / "a", "limit=5", "samples=2", "pipelined=false")
    cfg = make_cfg("backend=fake", ONE, "limit=5", "samples=2", "pipelined=false", "chunk_size=4")
    pipeline.run(cfg, tmp_path / "b", backend=Watch("fake", cfg.model.name, max_model_len=2048))
    # 3 chunks x 4 stages; the parts grow by each chunk's kept pairs before the next chunk's first request
    assert [n for n, _ in seen[::4]] == [0, 4, 8] and not any(final for _, final in seen)
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k != "created_at"}  # noqa: E731
                       for x in p.read_text().splitlines()]
    for f in ("preferences.jsonl", "kto.jsonl", "sft.jsonl", "rejected.jsonl", "no_violation.jsonl", "trace.jsonl",
              "review_queue.jsonl"):
        assert strip(tmp_path / "a" / f) == strip(tmp_path / "b" / f), f
    assert not (tmp_path / "b" / "work" / "parts").exists()


def test_a_null_chunk_size_takes_4000_rows_at_a_time(tmp_path, monkeypatch):
    """docs/getting-started.md and conf/config.yaml: chunk_size null means chunks of 4,000 rows (prompts x samples), so a large run
    stays flat in memory without a knob. Generation is stubbed: only the chunking is under test."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Question number {i}?"}) + "\n"
                               for i in range(2050)))
    sizes = []
    monkeypatch.setattr(pipeline, "generate", lambda job, rows: sizes.append(len(rows)) or [])
    cfg = make_cfg("backend=fake", ONE, f"prompts.path={prompts}", "samples=2")
    pipeline.run(cfg, tmp_path / "out", backend=FakeBackend("fake", cfg.model.name, max_model_len=2048))
    assert sizes == [4000, 100]


def test_summary_counts_a_stages_rows_apart_from_its_requests(tmp_path):
    """summary.json's stages.*.rows counted engine requests (a best-of-4 revision as 4 rows, the judge's two orders
    as 2) while the terminal counted rows. Now `rows` is rows, as the bars say, and `requests` the requests."""
    cfg = make_cfg("backend=fake", "limit=3", "samples=2", "sampling.revise_n=4", "sampling.revise_wave=null",
                   "judge=self")
    be = FakeBackend("fake", cfg.model.name, max_model_len=2048)
    log = io.StringIO()
    s = pipeline.run(cfg, tmp_path, backend=be, tracker=Tracker(console=Console(file=log, width=200)))
    st = s["stages"]
    assert st["respond"]["rows"] == st["respond"]["requests"] == 6
    assert st["revise r1"]["requests"] == 4 * st["revise r1"]["rows"] > 0  # every sample asked at once
    assert st["judge"]["requests"] == 2 * st["judge"]["rows"] == 2 * s["kept"] > 0  # both orders per pair
    # the closing lines off a terminal say the same (revise's printed its rows as its requests)
    said = {m[1]: (int(m[2]), int(m[3])) for m in re.finditer(r"^(.+?): (\d+) rows, (\d+) requests", log.getvalue(), re.M)}
    assert said["revise r1"] == (st["revise r1"]["rows"], st["revise r1"]["requests"])
    assert said["respond"] == (6, 6)
