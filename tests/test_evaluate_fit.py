"""evaluate leaves out (and counts) test pairs whose prompt alone fills --max-length: they score no answer token,
so both models would score 0 and the pair would count as a tie (the real tokenizer, no model weights)."""
from cai_gen.evaluate import fitting


def test_a_prompt_that_fills_max_length_is_left_out_and_counted(default_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    ans = [{"role": "assistant", "content": "ok"}]
    short = {"prompt": [{"role": "user", "content": "Where is my parcel?"}], "chosen": ans, "rejected": ans}
    long = {"prompt": [{"role": "user", "content": "parcel " * 300}], "chosen": ans, "rejected": ans}
    keep, skipped = fitting(tok, [short, long, short], 128)
    assert keep == [short, short] and skipped == 1
    assert fitting(tok, [short, long], 4096) == ([short, long], 0)


def test_an_unknown_loss_type_is_one_line_exit_2_before_anything_loads(tmp_path, capsys):
    import pytest

    from cai_gen.evaluate import parse

    assert parse([str(tmp_path), "--loss-type", "sigmoid,sft"]).loss_type == "sigmoid,sft"
    with pytest.raises(SystemExit) as e:
        parse([str(tmp_path), "--loss-type", "sigmoid,sftt"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "--loss-type: unknown 'sftt'" in err[0]
