"""Crash safety: kill -9 a run at several points, rerun the same command, get exactly a clean run's files."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cai_gen import pipeline
from cai_gen.backends.fake import FakeBackend
from cai_gen.errors import Resumable, UserError
from cai_gen.ledger import Ledger, saved

from .conftest import ONE, ROOT, make_cfg
from .run_files import assert_same_files, files

ARGS = ["backend=fake", ONE, "limit=10", "samples=2"]


def cli(out: Path, *extra: str, delay: float = 0.0, wait: bool = True):
    cmd = [sys.executable, "-m", "cai_gen", *ARGS, f"backend.delay={delay}", f"hydra.run.dir={out}", *extra]
    if wait:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def rows(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "preferences.jsonl").read_text().splitlines()]


def ledger_keys(out: Path) -> list[str]:
    return [json.loads(l)["key"] for l in (out / "work" / "generations.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """clean(*extra): a clean CLI run's output files (run_files.files) and ledger keys, one run per `extra`. The
    engine's delay is in the run's config.json and card, so a resumed run is compared with a clean run of its own
    delay (the kill tests resume with none, the Ctrl-C test's printed command keeps it)."""
    made = {}

    def get(*extra: str, delay: float = 0.0):
        if (extra, delay) not in made:
            out = tmp_path_factory.mktemp("clean") / "run"
            r = cli(out, *extra, delay=delay)
            assert r.returncode == 0, r.stderr
            made[extra, delay] = files(out), set(ledger_keys(out))
        return made[extra, delay]
    return get


def test_ledger_reuses_everything_on_rerun(tmp_path):
    cfg = make_cfg(*ARGS)
    be = FakeBackend("f", cfg.model.name)
    pipeline.run(cfg, tmp_path, backend=be)
    first = files(tmp_path)
    be2 = FakeBackend("f", cfg.model.name)
    pipeline.run(cfg, tmp_path, backend=be2)
    assert be2.calls == []  # nothing regenerated
    assert_same_files(files(tmp_path), first)


STAGES = ["respond", "critique", "gate", "revise"]  # 20 requests each (10 prompts x 2 samples), 0.05 s apiece


# staged (pipelined=false): the ledger's line count says which stage was running when the kill landed; pipelined
# (the default): the kill lands while every stage has requests in flight, and the gate says NO to about half the
# rows and a filter drops some pairs, so no_violation, rejected and the KTO/SFT rows of both go through a resume too
MIXED = ("backend.gate=mixed", "filters.max_edit=0.85")


@pytest.mark.parametrize("schedule,stage", [("staged", s) for s in range(4)] + [("pipelined", None)])
def test_kill_9_then_rerun_gives_the_clean_files(tmp_path, clean, schedule, stage):
    out = tmp_path / "run"
    extra = ("pipelined=false",) if schedule == "staged" else MIXED
    want, want_keys = clean(*extra)
    p = cli(out, *extra, delay=0.05, wait=False)
    led = out / "work" / "generations.jsonl"
    at = 20 * stage + 5 if stage is not None else 30  # a quarter into the stage
    t0 = time.time()
    while p.poll() is None and time.time() - t0 < 120:
        if led.exists() and len(led.read_text().splitlines()) >= at:
            break
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    done_before = len(led.read_text().splitlines())
    if stage is not None:  # the kill landed inside the stage under test, not after it
        assert at <= done_before < 20 * (stage + 1), f"{done_before} generations: not inside {STAGES[stage]}"
    else:
        assert at <= done_before < len(want_keys)
    r = cli(out, *extra)
    assert r.returncode == 0, r.stderr
    # every output file, not only the pairs (docs/concepts/resume.md: "exactly as a clean run's")
    assert_same_files(files(out), want)
    # the finished generations were reused, not redone: the ledger holds each of the clean run's requests once
    keys = ledger_keys(out)
    assert len(keys) == len(set(keys)) and set(keys) == want_keys


def test_the_file_comparison_sees_a_difference(tmp_path, clean):
    """The check above can fail: one changed character in a row, one dropped row, one dataset row, a missing
    plot, each is named; a row's created_at (when its generation was committed) is not compared."""
    import shutil

    import pyarrow as pa

    want, _ = clean()
    src = tmp_path / "src"
    assert cli(src).returncode == 0
    assert_same_files(files(src), want)

    def planted(change) -> str:
        out = tmp_path / f"p{len(list(tmp_path.iterdir()))}"
        shutil.copytree(src, out)
        change(out)
        with pytest.raises(AssertionError) as e:
            assert_same_files(files(out), want)
        return str(e.value)

    def edit(name, f):
        def change(out):
            lines = (out / name).read_text().splitlines()
            (out / name).write_text("".join(x + "\n" for x in f(lines)))
        return change

    def arrow_row(out):
        p = next((out / "kto").glob("train/*.arrow"))
        t = pa.ipc.open_stream(p.read_bytes()).read_all().slice(1)  # read, not mapped: the file is rewritten
        with pa.OSFile(str(p), "wb") as f, pa.ipc.new_stream(f, t.schema) as w:
            w.write_table(t)

    assert "kto.jsonl differs" in planted(edit("kto.jsonl", lambda ls: [ls[0].replace('true', 'false', 1)] + ls[1:]))
    assert "sft.jsonl differs" in planted(edit("sft.jsonl", lambda ls: ls[:-1]))
    assert "trace.jsonl differs" in planted(edit("trace.jsonl", lambda ls: ls[::-1]))
    assert "kto/train/data-00000-of-00001.arrow differs" in planted(arrow_row)
    assert "plots/gate.png" in planted(lambda out: (out / "plots" / "gate.png").unlink())
    assert "summary.json differs" in planted(edit("summary.json", lambda ls: [x.replace('"kept": 20', '"kept": 19')
                                                                              for x in ls]))
    # created_at is the one row field a resumed run may hold otherwise: it is not compared
    stamp = edit("preferences.jsonl", lambda ls: [re.sub(r'"created_at": "[^"]*"', '"created_at": "2020-01-01"', x)
                                                  for x in ls])
    out = tmp_path / "stamped"
    shutil.copytree(src, out)
    stamp(out)
    assert_same_files(files(out), want)


def test_torn_ledger_line_is_dropped(tmp_path, clean):
    cfg = make_cfg(*ARGS)
    pipeline.run(cfg, tmp_path, backend=FakeBackend("f", cfg.model.name))
    led = tmp_path / "work" / "generations.jsonl"
    led.write_bytes(led.read_bytes()[:-25])  # kill -9 in the middle of a write
    assert len(Ledger(led)) == 79
    be = FakeBackend("f", cfg.model.name)
    pipeline.run(cfg, tmp_path, backend=be)
    assert sum(be.calls) == 1 and len(led.read_text().splitlines()) == 80
    assert_same_files(files(tmp_path), clean()[0])


def test_changed_config_is_refused_unless_restart(tmp_path):
    cfg = make_cfg(*ARGS)
    run = tmp_path / "run"
    pipeline.run(cfg, run, backend=FakeBackend("f", cfg.model.name))
    with pytest.raises(UserError, match="different config \\(changed: samples\\)"):
        pipeline.run(make_cfg("backend=fake", ONE, "limit=10", "samples=3"), run, backend=FakeBackend("f", "m"))
    pipeline.run(make_cfg(*ARGS[:-1], "samples=3", "restart=true"), run, backend=FakeBackend("f", cfg.model.name))
    assert len(rows(run)) == 30
    # limit is free (docs/concepts/resume.md: `limit` ... may change freely, "raise `limit` to extend a run"), and so
    # is pipelined: no restart=true. A bigger limit in the same dir generates only the new prompts' requests, a
    # smaller one none, and either writes the files a clean run of that limit writes
    for limit, calls in ((12, [6, 6, 6, 6]), (5, [])):  # 12: respond, critique, gate, revise for 2 new prompts x 3
        clean = tmp_path / f"clean{limit}"
        pipeline.run(make_cfg("backend=fake", ONE, f"limit={limit}", "samples=3", "pipelined=false"), clean,
                     backend=FakeBackend("f", cfg.model.name))
        be = FakeBackend("f", cfg.model.name)
        pipeline.run(make_cfg("backend=fake", ONE, f"limit={limit}", "samples=3", "pipelined=false"), run, backend=be)
        assert be.calls == calls and len(rows(run)) == 3 * limit
        assert_same_files(files(run), files(clean))


def test_resume_knob_continues_a_named_dir(tmp_path):
    first = tmp_path / "first"
    assert cli(first).returncode == 0
    r = cli(tmp_path / "other", f"resume={first}")
    assert r.returncode == 0 and "reused" in r.stderr
    r = cli(tmp_path / "x", f"resume={tmp_path}/nope")
    assert r.returncode == 2 and "not a cai_gen run dir" in r.stderr


@pytest.mark.slow
def test_kill_9_real_vllm_run_then_resume(tmp_path):
    """The real engine: kill -9 once the first answers are committed (mid-critique), rerun, nothing lost or doubled."""
    out = tmp_path / "run"
    args = ["limit=3", "samples=2", "backend.enforce_eager=true", "sampling.max_tokens.respond=64",
            "sampling.max_tokens.critique=48", "sampling.max_tokens.revise=64", "filters.truncated_original=keep", "filters.truncated_revision=keep",
            f"hydra.run.dir={out}"]
    cmd = [sys.executable, "-m", "cai_gen", *args]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    led = out / "work" / "generations.jsonl"
    t0 = time.time()
    while p.poll() is None and time.time() - t0 < 900:
        if led.exists() and len(led.read_text().splitlines()) >= 6:  # all 6 answers committed
            break
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)  # the engine's worker process dies too, as on a preempted box
    p.wait()
    before = [json.loads(l) for l in led.read_text().splitlines()]
    assert len(before) >= 6 and not (out / "preferences.jsonl").exists()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "respond: 6 requests reused" in r.stderr  # pipelined: the rerun reports reuse per stage
    ids = [json.loads(l)["id"] for f in ("preferences.jsonl", "rejected.jsonl") for l in (out / f).read_text().splitlines()]
    assert sorted(ids) == sorted(f"{p}-s{s}" for p in ("acct-1", "acct-2", "acct-3") for s in (0, 1))
    after = [json.loads(l)["key"] for l in led.read_text().splitlines()]
    assert len(after) == len(set(after))  # no request generated twice
    assert [b["key"] for b in before] == after[: len(before)]


def test_the_fake_engine_is_its_own_kind(tmp_path):
    """Engines of one model are interchangeable on resume (test_openai.py); the fake engine's text is not the
    model's, so a dry-run dir is never continued by a real engine, nor is a fake run with another script."""
    cfg = make_cfg(*ARGS)
    pipeline.run(cfg, tmp_path, backend=FakeBackend("f", cfg.model.name))
    with pytest.raises(UserError, match=r"changed: [a-z., ]*backend.kind"):
        pipeline.run(make_cfg("backend=vllm", *ARGS[1:]), tmp_path)
    with pytest.raises(UserError, match=r"changed: backend.gate\)"):
        pipeline.run(make_cfg(*ARGS, "backend.gate=no"), tmp_path)


def test_created_at_is_when_the_rows_last_generation_finished(tmp_path):
    """Regression: created_at was the time the files were written, so every rerun (a re-filter, a resume, adding
    the judge) made old rows look new to `merge --duplicates newest` and half-life weights. It is now the time
    the row's last generation was committed to the ledger, and a rerun writes byte-identical files."""
    cfg = make_cfg(*ARGS, "judge=self")
    pipeline.run(cfg, tmp_path, backend=FakeBackend("f", cfg.model.name))
    files = ("preferences.jsonl", "kto.jsonl", "sft.jsonl", "no_violation.jsonl")
    first = {f: (tmp_path / f).read_bytes() for f in files}
    time.sleep(1.1)  # created_at has one-second resolution: a rerun a second later must not move it
    be = FakeBackend("f", cfg.model.name)
    pipeline.run(cfg, tmp_path, backend=be)
    assert be.calls == [] and {f: (tmp_path / f).read_bytes() for f in files} == first
    # date the ledger back to January, one second per line in commit order; the rows follow their generations
    led = tmp_path / "work" / "generations.jsonl"
    recs = [json.loads(x) for x in led.read_text().splitlines()]
    for i, r in enumerate(recs):
        r["gen"]["done_at"] = f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}+00:00"
    led.write_text("".join(json.dumps(r) + "\n" for r in recs))
    be = FakeBackend("f", cfg.model.name)
    pipeline.run(make_cfg(*ARGS, "judge=self", "filters.min_chars=1"), tmp_path, backend=be)  # a re-filter
    assert be.calls == []
    stamp = {r["gen"]["text"].strip(): r["gen"]["done_at"] for r in recs}
    prefs = rows(tmp_path)
    assert len(prefs) == 20
    for p in prefs:  # the revision is the row's last generation (the judge's verdicts came later and do not count)
        assert p["created_at"] == stamp[p["chosen"][0]["content"]], p["id"]
    sft = {r["id"]: r["created_at"] for r in map(json.loads, (tmp_path / "sft.jsonl").read_text().splitlines())}
    assert all(sft[p["id"]] == p["created_at"] for p in prefs)


def test_a_second_run_into_a_busy_dir_refuses_and_a_dead_holders_lock_is_taken_over(tmp_path, clean):
    """Regression: two processes started into one run dir each generated the same requests and appended to one
    ledger. The second now refuses in one line naming the holder; after the holder is killed -9, a rerun takes the
    lock over and finishes with each request generated once."""
    out = tmp_path / "run"
    first = cli(out, delay=0.05, wait=False)
    led = out / "work" / "generations.jsonl"
    t0 = time.time()
    while not led.exists() and first.poll() is None and time.time() - t0 < 120:
        time.sleep(0.05)
    second = cli(out)
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert f"in use by another cai_gen run (pid {first.pid} on " in lines[0] and "Traceback" not in second.stderr
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    third = cli(out)
    assert third.returncode == 0, third.stderr[-2000:]
    keys = [json.loads(x)["key"] for x in led.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 80  # 20 rows x respond, critique, gate, revise: none twice
    assert_same_files(files(out), clean()[0])


def test_the_lock_is_per_dir_and_released_after_a_run(tmp_path):
    from cai_gen.lock import RunLock

    with RunLock(tmp_path / "a"):
        with pytest.raises(UserError, match=rf"in use by another cai_gen run \(pid {os.getpid()} on "):
            with RunLock(tmp_path / "a"):
                pass
        with RunLock(tmp_path / "b"):  # another dir is free
            pass
    with RunLock(tmp_path / "a"):  # released on exit
        pass


def resume_args(line: str) -> list[str]:
    """The command a stop line prints after `resume: `, runnable here."""
    import shlex

    cmd = shlex.split(line.partition("; resume: ")[2])
    assert cmd[:3] == ["python", "-m", "cai_gen"], line
    return [sys.executable, *cmd[1:]]


def test_ctrl_c_is_one_line_exit_130_and_the_printed_command_resumes(tmp_path, clean):
    """Ctrl-C mid-run in the default (timestamped) run dir: no traceback, one line saying how many generations
    are saved (exactly the ledger's lines) and the command that resumes, which names that dir: "the same
    command" would open a new timestamped dir and generate everything again. That command then finishes the
    run in the same dir with each request generated once."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # run from tmp_path (outputs/ lands there) with this checkout
    hold = tmp_path / "hold"
    hold.write_text("25")  # the fake engine stops after 25 generations until this file goes: however loaded the
    # machine, the interrupt lands mid-run (a timed delay let the run finish first under load)
    cmd = [sys.executable, "-m", "cai_gen", *ARGS, f"backend.hold_file={hold}"]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while (len(leds := list(tmp_path.glob("outputs/*/*/work/generations.jsonl"))) != 1
           or len(leds[0].read_text().splitlines()) < 25) and p.poll() is None and time.time() - t0 < 300:
        time.sleep(0.05)
    assert p.poll() is None, p.stderr.read()[-2000:]
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    hold.unlink()  # the printed command, run as printed, must not hang
    led = leds[0]
    n = len(led.read_text().splitlines())
    assert p.returncode == 130 and "Traceback" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"cai_gen: stopped; {n} generations saved; resume: python -m cai_gen "), last
    assert f"hydra.run.dir={led.parent.parent}" in last
    assert n == 25
    r = subprocess.run(resume_args(last), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert list(tmp_path.glob("outputs/*/*/work")) == [led.parent]  # no second run dir
    keys = [json.loads(x)["key"] for x in led.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 80  # only the missing requests were generated
    assert_same_files(files(led.parent.parent), clean(f"backend.hold_file={hold}")[0])  # the knob is in config.json


def test_sigterm_stops_like_ctrl_c_exit_143_and_the_printed_command_resumes(tmp_path):
    """`kill`, `timeout` and a scheduler's preemption send SIGTERM, which Python's default turned into an instant
    death: no line, no engine shutdown (vLLM's worker outlived us, holding its memory). It is now a Ctrl-C with
    its own exit status: one line with what is saved and the command that resumes, exit 143."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    hold, out = tmp_path / "hold", tmp_path / "run"
    hold.write_text("25")
    cmd = [sys.executable, "-m", "cai_gen", *ARGS, f"backend.hold_file={hold}", f"hydra.run.dir={out}"]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    led, t0 = out / "work" / "generations.jsonl", time.time()
    while (not led.exists() or len(led.read_text().splitlines()) < 25) and p.poll() is None and time.time() - t0 < 300:
        time.sleep(0.05)
    assert p.poll() is None, p.stderr.read()[-2000:]
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    hold.unlink()
    assert p.returncode == 143 and "Traceback" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("cai_gen: stopped by SIGTERM; 25 generations saved; resume: python -m cai_gen "), last
    r = subprocess.run(resume_args(last), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    keys = [json.loads(x)["key"] for x in led.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 80


def test_disk_full_while_writing_the_ledger_is_one_line_and_loses_nothing(tmp_path, monkeypatch, clean):
    """A real ENOSPC (the kernel's /dev/full) on a ledger write: one line naming the file and what is saved, and
    the lines written before it stay whole, so the rerun resumes from them."""
    cfg = make_cfg(*ARGS)
    real_file = Ledger._file
    writes = {"n": 0}

    def fill_up(self):
        writes["n"] += 1
        return open("/dev/full", "ab") if writes["n"] > 30 else real_file(self)

    monkeypatch.setattr(Ledger, "_file", fill_up)
    with pytest.raises(Resumable, match=r"generations.jsonl: cannot write \(No space left on device\); free space, "
                                        r"then resume"):
        pipeline.run(cfg, tmp_path, backend=FakeBackend("f", cfg.model.name))
    assert saved(tmp_path / "work") == 30  # what the entry point reports as saved, beside the resume command
    monkeypatch.undo()
    be = FakeBackend("f", cfg.model.name)
    pipeline.run(cfg, tmp_path, backend=be)
    assert sum(be.calls) == 50
    assert_same_files(files(tmp_path), clean()[0])
