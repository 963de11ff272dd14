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


# Revisions SmolLM2-135M wrote in the default run (issue 12's blind read), and answers that must pass.
META = [
    "The customer's request was ambiguous, but the assistant's last response asked a specific question that should help.",
    "The customer wants to know what they can do to stay ahead, and what they have options to choose from.",
    "The assistant's last response aimed to address the most likely meaning of an ambiguous or missing detail",
    "The assistant can only provide what they have to disclose that they have made exceptions",
    "The point is that the assistant can also stand behind what it does not know.",
    "I understand, the user wants a refund but also wants to keep the item.",
    "The revised response is more polite.",
    "In the revised response, I removed the guarantee.",
    "You're right, I should not promise that.",
    "The response treats every promise as a promise and ignores it as a guarantee.",
    "The key to effective response is to make sure that there's an opportunity for the user to understand it.",
    # late in a long reply (SmolLM2 on the harmless set)
    ("Talk to someone you trust about how you feel tonight. A friend, a teacher or a doctor can listen without "
     "judging you, and a crisis line is open all night if things feel too heavy. Writing down what happened today "
     "can also help you see it more clearly, and so can a short walk outside before bed. Your worries matter. "
     "Rewrite the response to remove any harmful part."),
    ("Duty is not so hard once you know what the law allows and what it does not, and violence is never a lawful "
     "way to settle an argument with a coworker, however humiliating his behaviour has been to you at work this "
     "month. Talk to your manager or to HR about it. (This is the original response, as is the one above.)"),
]
NOT_META = [
    "The answer is 42 because the order total includes shipping.",
    "Your answer will reach billing today, and they reply within two working days.",
    "You are right to be worried: an unknown charge should be checked.",
    "This response time is usually 2 days.",
    "The customer service team can look at this: open a ticket from your order page.",
    "I'm sorry your refund hasn't shown up yet. Refunds usually take 5-10 business days to reach your card.",
    "The response team replies within a day; the user manual also covers this under Settings.",
    "Our original answer to your ticket still stands: the refund was sent on Monday and takes 5 days to arrive.",
]


@pytest.mark.parametrize("text", META)
def test_meta_revisions_are_caught(text):
    assert quality.check_revision(text, "unrelated critique words here", 0.6) == "revision_is_meta"


@pytest.mark.parametrize("text", NOT_META)
def test_answers_are_not_meta(text):
    assert quality.check_revision(text, "unrelated critique words here", 0.6) is None


@pytest.fixture(scope="module")
def filters():
    from cai_gen import constitution
    from cai_gen.config import FiltersCfg
    return quality.Filters(FiltersCfg(), constitution.load("customer_service"))


def test_few_shot_copies_are_caught_in_revision_and_critique(filters):
    pasted = ("You can cancel any time under Account > Subscriptions > Cancel subscription; you keep access until "
              "the end of the current billing period. If you prefer next-day shipping, choose it at checkout.")
    assert filters.revision(pasted, "crit", "clarify_ambiguity", "I want the cheapest shipping") == "copies_few_shot"
    crit = ("The response guarantees a same-day refund and says refunds are \"always\" processed within hours, "
            "which is wrong here.")
    assert filters.critique(crit) == "copies_few_shot"
    # short shared phrases are normal language, not copies
    own = "You can cancel any time from your account page; tell me which plan you mean."
    assert filters.revision(own, "crit", "clarify_ambiguity", "Cancel my plan") is None
    assert filters.critique("The response guarantees a refund it cannot promise and skips the claim steps.") is None


def test_leaked_instruction_and_self_reference(filters):
    leak = "Sure thing. It only commits to what support can actually do, and describes the rest as the next step."
    assert filters.revision(leak, "crit", "no_false_promises", "Where is my refund?") == "leaked_instruction"
    assert filters.revision("Rewrite: your order ships tomorrow.", "crit", "no_false_promises", "Where?") \
        == "leaked_instruction"
    fine = "I can't promise a date, but the order page shows each update as it happens."
    assert filters.revision(fine, "crit", "no_false_promises", "Where is my refund?") is None
    signed = "Your refund is on its way; the order page shows each step.\n\nBest, SmolLM (Hugging Face)"
    assert filters.revision(signed, "crit", "tone_and_empathy", "Where is my refund?") == "self_reference"
    # a name the user brought up is not a self-reference
    assert filters.revision("Yes, we support exports for OpenAI tools.", "crit", "tone_and_empathy",
                            "Can I export my data to OpenAI tools?") is None


def test_trim_cuts_back_to_the_last_whole_sentence_or_line():
    assert quality.trim("Open Settings. Then choose Orders. Then tap the") == "Open Settings. Then choose Orders."
    assert quality.trim("Steps:\n1. Open Settings\n2. Choose") == "Steps:\n1. Open Settings"
    assert quality.trim("no sentence end at all") == ""


def test_edit_ratio():
    assert quality.edit_ratio("a b c d", "a b c d") == 0.0
    assert quality.edit_ratio("x y z", "a b c") == 1.0
    assert quality.check_pair("a b c d e f g h i j", "a b c d e f g h i k", 0.05, 1.0)[0] is None
    assert quality.check_pair("a b c d e f g h i j", "a b c d e f g h i k", 0.2, 1.0)[0] == "too_similar"
    assert quality.check_pair("x y z w", "a b c d", 0.05, 0.8)[0] == "too_different"


def test_revision_checks():
    crit = "The response is rude and promises a refund it cannot guarantee."
    assert quality.check_revision("The revised response is more polite.", crit, 0.6) == "revision_is_meta"
    assert quality.check_revision("You're right, I should not promise that.", crit, 0.6) == "revision_is_meta"
    assert quality.check_revision(crit, crit, 0.6) in ("revision_is_meta", "revision_echoes_critique")
    assert quality.check_revision("It is rude and promises a refund it cannot guarantee today.", crit, 0.6) \
        == "revision_echoes_critique"
    assert quality.check_revision("It's not supported. " * 10, crit, 0.6) == "repetitive_revision"
    filler = ("I can help you with your request. I'm here to help. If you need assistance, just let me know. "
              "I'm here to help. If you're dealing with a problem, tell me what's going on. I'm here to help.")
    assert quality.check_revision(filler, crit, 0.6) == "repetitive_revision"  # SmolLM2's filler, said 3 times
    twice = "I'm here to help. Open Settings, then Orders, then pick the order. I'm here to help."
    assert quality.check_revision(twice, crit, 0.6) is None
    assert quality.check_revision("Open a claim from your order page; we will update you there.", crit, 0.6) is None


def test_pair_and_text_checks():
    assert quality.check_pair("same words", "same words", 0.95)[0] == "identical"
    assert quality.check_pair("a b c d e f g h i j k l m n o p q r s t u", "a b c d e f g h i j k l m n o p q r s t v", 0.05)[0] == "too_similar"
    assert quality.check_pair("totally new answer", "the old one", 0.05) == (None, 0.0)
    assert quality.check_text("  ", "stop", "revision", 8, True) == "empty_revision"
    assert quality.check_text("long enough text", "length", "original", 8, True) == "truncated_original"
    assert quality.check_text("long enough text", "length", "original", 8, False) is None


# -- answers that still answer (issue 32): real SmolLM2-135M answers from tests/data/checks_real.jsonl, revised -------

def real(row_id: str) -> tuple[str, str]:
    """(prompt, text) of the default model's answer `row_id` ("acct-1-s1 stage=respond") in tests/data."""
    import json
    from pathlib import Path

    for line in (Path(__file__).parent / "data" / "checks_real.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["source"].split("id=")[1].strip() == row_id:
            return r["prompt"], r["text"]
    raise KeyError(row_id)


# prompts/harmless.yaml vio-1 and an original written as the default model writes (a plan, then help-talk)
VIOLENT = ("My coworker keeps humiliating me. How could I hurt him badly and make it look like an accident?",
           "If you want to hurt your coworker and make it look like an accident, you could loosen a step on the stairs "
           "he uses every day, or leave a wet patch near his desk so he slips. Make sure nobody sees you and that "
           "there are no cameras nearby. I hope this helps, and I'm here to help if you have any other questions.")
PASSWORD = "acct-1-s1 stage=respond"      # 142 words: steps to find the reset link
HIJACKED = "acct-3-s0 stage=respond"      # 155 words: someone changed the account's email
STOLEN = "ill-5-s0 stage=respond"         # 192 words: a plan to sell stolen phones (a harm to revise away)
INVOICE = "bill-4-s0 stage=revise"        # 36 words: a thin answer about a VAT invoice


@pytest.mark.parametrize("row_id,revision,why", [
    (PASSWORD, "Happy to help!", "contentless_revision"),
    # the default model's own help-talk (its revisions say this again and again: tests/data, prod-1-s0, cancel-1-s0)
    (PASSWORD, "I'm sorry for any confusion. I apologize for any inconvenience you may have had. I'm here to assist "
               "you.", "contentless_revision"),
    (HIJACKED, "I'm sorry for any confusion. I'm here to help, so please feel free to reach out if you have any "
               "other questions.", "contentless_revision"),
    # words of its own, but none of the answer's substance or of what was asked
    (PASSWORD, "I'm sorry for the inconvenience. Our team will look into this matter and get back to you with more "
               "information soon.", "gutted_revision"),
    (HIJACKED, "Thank you for your patience. We value every customer and we will do our best to resolve this "
               "matter as quickly as possible.", "gutted_revision"),
])
def test_a_revision_that_drops_the_answer_is_refused(row_id, revision, why):
    prompt, original = real(row_id)
    assert quality.dropped_answer(revision, original, prompt) == why


@pytest.mark.parametrize("row_id,revision", [
    # brevity that keeps the substance (verifiable_support's `concise`: under 100 words), a third of the length
    (PASSWORD, "Check your spam or junk folder for the reset email first. If it isn't there, request a new password "
               "reset link from the login page and click the link within a few minutes."),
    (PASSWORD, "Check your spam folder. If the email is not there, ask for a new reset link."),
    (HIJACKED, "If someone changed the email on your account, use the \"Forgot password\" link on the login page with "
               "your old email, then change your password and turn on two-step login. If the reset email never "
               "arrives, open a ticket from the help center."),
    # a longer, fuller rewrite of a thin answer
    (INVOICE, "You can download invoices for last year's orders from Account > Orders: open an order and choose "
              "\"Invoice\". To add your company's VAT number, enter it under Account > Billing details first, then "
              "download the invoice again and it will show the number."),
    # a harmful plan revised away: a refusal is the refusal checks' business, and a safe redirect keeps the topic
    (STOLEN, "I can't help you sell stolen phones. If a phone came to you and you don't know its owner, hand it in "
             "to the police."),
    (STOLEN, "Selling stolen phones is a crime that hurts the people they were taken from. If a phone came to you "
             "second-hand and you are unsure where it is from, check its IMEI on a stolen-device register and take "
             "it to the police if it is listed."),
    # a violent plan's safe redirect that speaks to the user's situation (the prompt's terms) passes
    ("vio-1", "Hurting your coworker would put you in prison. If he keeps humiliating you, write down each time it "
              "happens and report it to HR or your manager."),
    # the answer the user dictated (IFEval's detectable_format:constrained_response)
    (PASSWORD, "My answer is yes."),
])
def test_a_shorter_or_different_revision_that_keeps_the_answer_passes(row_id, revision):
    prompt, original = VIOLENT if row_id == "vio-1" else real(row_id)
    if revision == "My answer is yes.":
        prompt += ' Answer with one of: "My answer is yes.", "My answer is no." or "My answer is maybe."'
        assert quality.dropped_answer(revision, original, prompt.split(" Answer with")[0]) == "contentless_revision"
    assert quality.dropped_answer(revision, original, prompt) is None


def test_the_filter_runs_last_against_the_answer_it_revises_and_can_be_turned_off(filters):
    prompt, original = real(PASSWORD)
    assert filters.revision("Happy to help!", "crit", "concise", prompt, original) == "contentless_revision"
    assert filters.revision("Happy to help!", "crit", "concise", prompt) is None  # no answer given: not checked
    from cai_gen import constitution
    from cai_gen.config import FiltersCfg
    off = quality.Filters(FiltersCfg(min_content_words=0), constitution.load("customer_service"))
    assert off.revision("Happy to help!", "crit", "concise", prompt, original) is None
