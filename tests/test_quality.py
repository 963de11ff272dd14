import pytest

from cai_gen import quality


@pytest.mark.parametrize("text,clean", [
    ("Here is a revised response:\n\nHello, I can help.", "Hello, I can help."),
    ("Sure, here's the rewritten response:\nHi there.", "Hi there."),
    ("Revision: Thanks for asking.", "Thanks for asking."),
    ("I've rewritten the original response to address the problem you've identified:\nDear customer", "Dear customer"),
    ("**Revised response:**\nGo to Settings.", "Go to Settings."),
])
def test_prefaces_are_stripped(text, clean):
    assert quality.strip_preface(text) == (clean, True)


@pytest.mark.parametrize("text", ["Sure! To reset your password, open Settings.", "Here is how to reset it: open Settings.",
                                  "Revisions to your order are possible within 1 hour."])
def test_real_answers_are_left_alone(text):
    assert quality.strip_preface(text) == (text, False)


def test_revision_checks():
    crit = "The response is rude and promises a refund it cannot guarantee."
    assert quality.check_revision("The revised response is more polite.", crit, 0.6) == "revision_is_meta"
    assert quality.check_revision("You're right, I should not promise that.", crit, 0.6) == "revision_is_meta"
    assert quality.check_revision(crit, crit, 0.6) in ("revision_is_meta", "revision_echoes_critique")
    assert quality.check_revision("It is rude and promises a refund it cannot guarantee today.", crit, 0.6) \
        == "revision_echoes_critique"
    assert quality.check_revision("It's not supported. " * 10, crit, 0.6) == "repetitive_revision"
    assert quality.check_revision("Open a claim from your order page; we will update you there.", crit, 0.6) is None


def test_pair_and_text_checks():
    assert quality.check_pair("same words", "same words", 0.95)[0] == "identical"
    assert quality.check_pair("a b c d e f g h i j k l m n o p q r s t u", "a b c d e f g h i j k l m n o p q r s t v", 0.95)[0] == "too_similar"
    assert quality.check_pair("totally new answer", "the old one", 0.95) == (None, 0.0)
    assert quality.check_text("  ", "stop", "revision", 8, True) == "empty_revision"
    assert quality.check_text("long enough text", "length", "original", 8, True) == "truncated_original"
    assert quality.check_text("long enough text", "length", "original", 8, False) is None
