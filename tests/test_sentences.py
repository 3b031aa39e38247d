"""Sentence splitter (method.md section 6): an exact table, the span invariant, speed, and the
paper-compatible chunk truncation used by the ensemble."""

import random
import time

import pytest

from cotransfer.sentences import SPLITTER_VERSION, Sentence, split, truncate_to_complete, truncate_to_sentence

# (id, text, expected sentences). Ids say which rule a case pins down.
CASES = [
    # basics
    ("empty", "", []),
    ("whitespace_only", "   \n\t \n ", []),
    ("single", "One sentence.", ["One sentence."]),
    ("no_terminal_punct", "no punctuation at all", ["no punctuation at all"]),
    ("two", "First one. Second one.", ["First one.", "Second one."]),
    ("bang_question", "Is it? Yes! Done.", ["Is it?", "Yes!", "Done."]),
    ("lowercase_continues", "lowercase after. continues here.", ["lowercase after. continues here."]),
    ("question_lowercase", "is it 4? maybe not.", ["is it 4? maybe not."]),
    ("ellipsis", "Wait... Let me recheck. Hmm\u2026 maybe not.", ["Wait...", "Let me recheck.", "Hmm\u2026 maybe not."]),
    # MedCalc: decimals, units, formulas
    ("decimal_units", "Creatinine is 1.73 mg/dL today. Next.", ["Creatinine is 1.73 mg/dL today.", "Next."]),
    ("gfr_units", "GFR is 72.3 mL/min/1.73 m\u00b2 here. Fine.", ["GFR is 72.3 mL/min/1.73 m\u00b2 here.", "Fine."]),
    ("leading_dot_decimal", "Use 0.8 \u00d7 72.3 and .5 as well. Then stop.",
     ["Use 0.8 \u00d7 72.3 and .5 as well.", "Then stop."]),
    ("unit_letter_before_dot", "Platelets 150 x 10^9/L. Normal.", ["Platelets 150 x 10^9/L.", "Normal."]),
    ("unit_min_ends_sentence", "CrCl is 72 mL/min. Therefore dose normally.",
     ["CrCl is 72 mL/min.", "Therefore dose normally."]),
    ("number_ends_sentence", "So the score is 72. The end.", ["So the score is 72.", "The end."]),
    ("number_ends_text", "So the score is 72.", ["So the score is 72."]),
    ("digit_led_next", "The sum is 7. 2 more points come from age.", ["The sum is 7.", "2 more points come from age."]),
    ("ckd_epi",
     "The patient's creatinine is 1.2 mg/dL. Using CKD-EPI: eGFR = 141 \u00d7 min(Scr/\u03ba, 1)^\u03b1 \u00d7 "
     "0.993^Age. Plugging in, eGFR \u2248 72.35 mL/min/1.73 m\u00b2. So the answer is 72.35.",
     ["The patient's creatinine is 1.2 mg/dL.", "Using CKD-EPI: eGFR = 141 \u00d7 min(Scr/\u03ba, 1)^\u03b1 \u00d7 0.993^Age.",
      "Plugging in, eGFR \u2248 72.35 mL/min/1.73 m\u00b2.", "So the answer is 72.35."]),
    ("lines_and_continuation", "Weight: 70 kg\nHeight: 170 cm\nBMI = 70 / (1.7)^2\n= 24.2\nSo BMI is 24.2.",
     ["Weight: 70 kg", "Height: 170 cm", "BMI = 70 / (1.7)^2\n= 24.2", "So BMI is 24.2."]),
    ("height_inches_quote", "He is 5'10\" tall. Weight is 170 lbs. BMI follows.",
     ["He is 5'10\" tall.", "Weight is 170 lbs.", "BMI follows."]),
    ("currency_is_not_math", "It costs $5. Then $6 more.", ["It costs $5.", "Then $6 more."]),
    # abbreviations and initials
    ("eg", "Common drugs, e.g. Aspirin, help. Yes.", ["Common drugs, e.g. Aspirin, help.", "Yes."]),
    ("ie", "That is, i.e. Not this. Ok.", ["That is, i.e. Not this.", "Ok."]),
    ("vs", "Compare A vs. B carefully. Done.", ["Compare A vs. B carefully.", "Done."]),
    ("approx", "It is approx. 42 units. Good.", ["It is approx. 42 units.", "Good."]),
    ("dr_fig_no", "Dr. Smith saw Fig. 3 in No. 5. End.", ["Dr. Smith saw Fig. 3 in No. 5.", "End."]),
    ("no_as_word", "Is he on dialysis? No. So we skip it.", ["Is he on dialysis?", "No.", "So we skip it."]),
    ("us", "Made in the U.S. Market grew. Done.", ["Made in the U.S. Market grew.", "Done."]),
    ("am", "At 9 a.m. Before lunch. After.", ["At 9 a.m. Before lunch.", "After."]),
    ("pm_then_opener", "We saw him at 9 p.m. The patient was stable.", ["We saw him at 9 p.m.", "The patient was stable."]),
    ("initial", "J. Smith wrote it. Then more.", ["J. Smith wrote it.", "Then more."]),
    ("middle_initial", "John F. Kennedy spoke. Next.", ["John F. Kennedy spoke.", "Next."]),
    ("class_letter_ends", "The Child-Pugh class C. Therefore the score is 10.",
     ["The Child-Pugh class C.", "Therefore the score is 10."]),
    # list markers, steps, bullets, paragraphs
    ("numbered_lines", "Steps:\n1. Add the values.\n2. Divide by two.", ["Steps:", "1. Add the values.", "2. Divide by two."]),
    ("inline_steps", "Step 1. Compute the sum. Step 2. Divide it.", ["Step 1. Compute the sum.", "Step 2. Divide it."]),
    ("paren_markers", "Do this:\n1) take DBP\n2) add SBP", ["Do this:", "1) take DBP", "2) add SBP"]),
    ("inline_paren_markers", "Options: 1) take DBP 2) take SBP. Then compute.",
     ["Options: 1) take DBP 2) take SBP.", "Then compute."]),
    ("unclosed_paren_before_list", "The MAP (mean arterial pressure is:\n1) take DBP\n2) add SBP",
     ["The MAP (mean arterial pressure is:", "1) take DBP", "2) add SBP"]),
    ("indented_marker", "1. Compute x.\n   2. Indented step.", ["1. Compute x.", "2. Indented step."]),
    ("dash_bullets", "List:\n- first item\n- second item", ["List:", "- first item", "- second item"]),
    ("letter_markers", "a. alpha here\nb. beta there", ["a. alpha here", "b. beta there"]),
    ("markdown_sections",
     "**Step 1: Identify the criteria**\n- Age \u2265 65: +1\n- Hypertension: +1\n\n**Step 2: Sum**\nTotal = 2.",
     ["**Step 1: Identify the criteria**", "- Age \u2265 65: +1", "- Hypertension: +1", "**Step 2: Sum**", "Total = 2."]),
    ("heading", "Intro text here\n## Result\nIt is 4.", ["Intro text here", "## Result", "It is 4."]),
    ("paragraphs", "Para one ends\n\nPara two starts", ["Para one ends", "Para two starts"]),
    ("many_blank_lines", "Score is 4.\n\n\n\nNext para.", ["Score is 4.", "Next para."]),
    ("crlf", "First line.\r\n\r\nSecond para.", ["First line.", "Second para."]),
    # brackets, math, quotes, JSON
    ("inside_parens", "We get (see Eq. 2. Below) the value. Next.", ["We get (see Eq. 2. Below) the value.", "Next."]),
    ("closing_paren_belongs", "It works (mostly.) Then more.", ["It works (mostly.)", "Then more."]),
    ("dollar_math", "Math $x = 2.5. Y$ holds. Next.", ["Math $x = 2.5. Y$ holds.", "Next."]),
    ("paren_math", "Also \\(f(x) = 3. Then\\) ok. Next.", ["Also \\(f(x) = 3. Then\\) ok.", "Next."]),
    ("display_math", "Thus $$a = 1. B = 2.$$ Done.", ["Thus $$a = 1. B = 2.$$ Done."]),
    ("boxed_after", "Thus, HAS-BLED = 3. \\boxed{3}", ["Thus, HAS-BLED = 3.", "\\boxed{3}"]),
    ("json_fragment", 'Output {"answer": "4. Five"} now. Next.', ['Output {"answer": "4. Five"} now.', "Next."]),
    ("json_cot",
     'The JSON is {"step_by_step_thinking": "Step 1. Compute. Step 2. Sum.", "answer": "4"}. Done.',
     ['The JSON is {"step_by_step_thinking": "Step 1. Compute. Step 2. Sum.", "answer": "4"}.', "Done."]),
    ("json_multiline", '{\n  "step_by_step_thinking": "A. B.",\n  "answer": "4"\n}\nThat is it.',
     ['{\n  "step_by_step_thinking": "A. B.",\n  "answer": "4"\n}', "That is it."]),
    ("quoted_json_string", 'The field "Step 1. Add. Step 2. Sum." is long. Next.',
     ['The field "Step 1. Add. Step 2. Sum." is long.', "Next."]),
    ("closing_quote_belongs", 'He said "stop." Then left.', ['He said "stop."', "Then left."]),
    ("quote_in_parens", 'Let me see (the note says: "no fever." Hmm). OK then.',
     ['Let me see (the note says: "no fever." Hmm).', "OK then."]),
    # Instruction Induction
    ("ii_single_quotes", "The word 'cat.' Next word.", ["The word 'cat.'", "Next word."]),
    ("ii_pairs",
     "Input: cat\nOutput: hat\n\nThe pattern: each output \"rhymes\" with the input. Also, words like 'dog' and 'log'.",
     ["Input: cat", "Output: hat", "The pattern: each output \"rhymes\" with the input.",
      "Also, words like 'dog' and 'log'."]),
    ("ii_lists", "Rhymes: cat, hat. Synonyms: big, large.", ["Rhymes: cat, hat.", "Synonyms: big, large."]),
    ("ii_curly_quotes", "The outputs are \u201cchat. Chien.\u201d Maybe French. Yes.",
     ["The outputs are \u201cchat. Chien.\u201d", "Maybe French.", "Yes."]),
    ("ii_instruction",
     "Looking at the examples:\n- \"seven\" -> \"7\"\n- \"twelve\" -> \"12\"\nSo the instruction is to write the number as digits.",
     ["Looking at the examples:", "- \"seven\" -> \"7\"", "- \"twelve\" -> \"12\"",
      "So the instruction is to write the number as digits."]),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_split_table(text, expected):
    got = split(text)
    assert [s.text for s in got] == expected
    for i, s in enumerate(got):
        assert isinstance(s, Sentence) and s.index == i and text[s.start:s.end] == s.text


def assert_rebuilds(text: str) -> None:
    """Spans are in order, trimmed, separated by whitespace only, and rebuild the text."""
    sents = split(text)
    pos = 0
    pieces = []
    for s in sents:
        assert s.start >= pos and s.end > s.start
        gap = text[pos:s.start]
        assert gap.strip() == ""
        if pos > 0:
            assert gap, "two sentences must be separated by whitespace"
        assert not s.text[0].isspace() and not s.text[-1].isspace()
        pieces += [gap, s.text]
        pos = s.end
    assert text[pos:].strip() == ""
    assert "".join(pieces) + text[pos:] == text


@pytest.mark.parametrize("text", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_spans_rebuild_the_text(text):
    assert_rebuilds(text)


FRAGMENTS = ["The value is 3.5.", " ", "  ", "\n", "\n\n", "\r\n", "\t", "e.g.", "1.", "2)", "- ", "* ", "# ",
             "(", ")", "[", "]", "{", "}", "$", "$$", '"', "\u201c", "\u201d", "'", "Next!", "Why?", "x", "Dr.",
             "mg/dL", "72.", "Step 2.", "\\(", "\\)", "word", "A", "J.", "U.S.", "...", "\u2026", ".", "So",
             "\u00b2", "5'10\"", "\\boxed{4}", '{"answer": "4"}']


def test_random_texts_rebuild():
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randrange(1, 60)))
        assert_rebuilds(text)
        assert split(text) == split(text)  # deterministic


def test_long_text_is_fast():
    """A ~30k-character CoT splits in milliseconds; a quadratic scan would take seconds."""
    text = "The creatinine is 1.2 mg/dL, e.g. normal. So the score is 4. " * 500
    t0 = time.perf_counter()
    sents = split(text)
    assert time.perf_counter() - t0 < 2.0
    assert len(sents) == 1000
    assert_rebuilds(text)


@pytest.mark.parametrize("text", [
    "(" * 30000, "\u201c" * 30000, "\\(" * 15000, '"' * 30000, "$" * 30000, "A. " * 10000,
    "\nA" * 15000, "a" * 30000 + ".", "[" + "x. Y " * 6000,
], ids=["parens", "curly", "math", "quotes", "dollars", "initials", "lines", "longword", "unclosed"])
def test_degenerate_inputs_are_fast(text):
    t0 = time.perf_counter()
    split(text)
    assert time.perf_counter() - t0 < 2.0


def test_unclosed_bracket_does_not_swallow_the_text():
    sents = split("Compute (see below. Then we add 3. Finally we divide.")
    assert [s.text for s in sents] == ["Compute (see below.", "Then we add 3.", "Finally we divide."]


def test_version_is_a_string():
    assert isinstance(SPLITTER_VERSION, str) and SPLITTER_VERSION


@pytest.mark.parametrize("chunk, expected", [
    ("The sum is large. And then we", "The sum is large."),
    ("No cut point here", "No cut point here"),
    ("Value is 3.5 and 4. More text", "Value is 3.5 and 4. More text"),  # dot after a digit: no cut
    ("Check the patient. See Dr. Then", "Check the patient."),  # "Dr" looks like an abbreviation
    ("First sentence ended! Second", "First sentence ended!"),
    ("First sentence here! Second", "First sentence here! Second"),  # "here" is 1-4 letters: skipped
    ("Made in the U.S. Then", "Made in the U.S. Then"),  # "U.S" dotted initialism, "U" 1 letter
    ("The total, computed.Next we go", "The total, computed."),  # an uppercase letter right after
    ("It is computed. then more", "It is computed."),  # whitespace after is enough
    ("It is computed.", "It is computed."),
    ("", ""),
])
def test_truncate_to_sentence(chunk, expected):
    assert truncate_to_sentence(chunk) == expected


@pytest.mark.parametrize("chunk, expected", [
    ("4+2=6. 6", "4+2=6."),  # a step cut mid-way is dropped, also after a number (the paper rule keeps it)
    ("4+2=6. 6*5=0. 0*", "4+2=6. 6*5=0."),
    ("4+2=6.", "4+2=6."),
    ("4 plus 2 is 6. 6 times", "4 plus 2 is 6."),
    ("The sum is large. And then we", "The sum is large."),
    ("The dose is 3.5 mg. Then", "The dose is 3.5 mg."),
    ("The dose is 3.5", "The dose is 3.5"),  # no complete sentence: kept whole
    ("4 + 2 -> 6; 6 *", "4 + 2 -> 6; 6 *"),  # ";" ends no sentence
    ("It is done! Next", "It is done!"),
    ('He said "stop." Then', 'He said "stop."'),
    ("", ""),
])
def test_truncate_to_complete(chunk, expected):
    assert truncate_to_complete(chunk) == expected
    assert truncate_to_sentence("4+2=6. 6") == "4+2=6. 6"  # the original rule, for contrast


@pytest.mark.parametrize("text, expected", [
    ("Call `x = 1. Then y = 2.` now. Ok.", ["Call `x = 1. Then y = 2.` now.", "Ok."]),
    ("See:\n```\nStep 1. Do it.\n\nStep 2. Do that.\n```\nDone. Next.",
     ["See:\n```\nStep 1. Do it.\n\nStep 2. Do that.\n```", "Done.", "Next."]),
    ("Code ```a. B. c``` end. Ok.", ["Code ```a. B. c``` end.", "Ok."]),
    ("An unclosed ` tick. Then more.", ["An unclosed ` tick.", "Then more."]),  # no code span: split
])
def test_inline_code_and_fenced_blocks_are_never_split(text, expected):
    """Issue 13's defect: the splitter cut inside `inline code` and ``` fenced blocks ```."""
    assert [s.text for s in split(text)] == expected
