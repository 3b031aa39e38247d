import random
import time

import pytest

from cotransfer.sentences import split, truncate_to_sentence

CASES = [
    ("", []),
    ("   \n ", []),
    ("One sentence.", ["One sentence."]),
    ("First one. Second one.", ["First one.", "Second one."]),
    ("Is it? Yes! Done.", ["Is it?", "Yes!", "Done."]),
    ("Creatinine is 1.73 mg/dL today. Next.", ["Creatinine is 1.73 mg/dL today.", "Next."]),
    ("GFR is 72.3 mL/min/1.73 m² here. Fine.", ["GFR is 72.3 mL/min/1.73 m² here.", "Fine."]),
    ("Use 0.8 × 72.3 and .5 as well. Then stop.", ["Use 0.8 × 72.3 and .5 as well.", "Then stop."]),
    ("Platelets 150 x 10^9/L. Normal.", ["Platelets 150 x 10^9/L.", "Normal."]),
    ("Common drugs, e.g. Aspirin, help. Yes.", ["Common drugs, e.g. Aspirin, help.", "Yes."]),
    ("That is, i.e. Not this. Ok.", ["That is, i.e. Not this.", "Ok."]),
    ("Compare A vs. B carefully. Done.", ["Compare A vs. B carefully.", "Done."]),
    ("It is approx. 42 units. Good.", ["It is approx. 42 units.", "Good."]),
    ("Dr. Smith saw Fig. 3 in No. 5. End.", ["Dr. Smith saw Fig. 3 in No. 5.", "End."]),
    ("Made in the U.S. Market grew. Done.", ["Made in the U.S. Market grew.", "Done."]),
    ("At 9 a.m. Before lunch. After.", ["At 9 a.m. Before lunch.", "After."]),
    ("J. Smith wrote it. Then more.", ["J. Smith wrote it.", "Then more."]),
    ("Steps:\n1. Add the values.\n2. Divide by two.", ["Steps:", "1. Add the values.", "2. Divide by two."]),
    ("Step 1. Compute the sum. Step 2. Divide it.", ["Step 1. Compute the sum.", "Step 2. Divide it."]),
    ("List:\n- first item\n- second item", ["List:", "- first item", "- second item"]),
    ("a. alpha here\nb. beta there", ["a. alpha here", "b. beta there"]),
    ("Para one ends\n\nPara two starts", ["Para one ends", "Para two starts"]),
    ("We get (see Eq. 2. Below) the value. Next.", ["We get (see Eq. 2. Below) the value.", "Next."]),
    ("Math $x = 2.5. Y$ holds. Next.", ["Math $x = 2.5. Y$ holds.", "Next."]),
    ("Also \\(f(x) = 3. Then\\) ok. Next.", ["Also \\(f(x) = 3. Then\\) ok.", "Next."]),
    ('Output {"answer": "4. Five"} now. Next.', ['Output {"answer": "4. Five"} now.', "Next."]),
    ("So the score is 72. The end.", ["So the score is 72.", "The end."]),
    ("So the score is 72.", ["So the score is 72."]),
    ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
    ("It works (mostly.) Then more.", ["It works (mostly.)", "Then more."]),
    ("The word 'cat.' Next word.", ["The word 'cat.'", "Next word."]),
    ("lowercase after. continues here.", ["lowercase after. continues here."]),
    ("Rhymes: cat, hat. Synonyms: big, large.", ["Rhymes: cat, hat.", "Synonyms: big, large."]),
]


@pytest.mark.parametrize("text, expected", CASES)
def test_split_table(text, expected):
    got = split(text)
    assert [s.text for s in got] == expected
    for i, s in enumerate(got):
        assert s.index == i and text[s.start:s.end] == s.text


def rebuilds(text):
    sents = split(text)
    pos = 0
    for s in sents:
        assert text[pos:s.start].strip() == ""  # gaps are whitespace only
        assert s.start >= pos
        pos = s.end
    assert text[pos:].strip() == ""


@pytest.mark.parametrize("text, _", CASES)
def test_spans_rebuild_the_text(text, _):
    rebuilds(text)


def test_random_texts_rebuild():
    frags = ["The value is 3.5.", " ", "\n", "\n\n", "e.g.", "1.", "- ", "(", ")", "$", "\"", "Next!", "Why?",
             "x", "Dr.", "mg/dL", "72.", "Step 2.", "\\(", "\\)", "{", "}", "word", "A"]
    rng = random.Random(0)
    for _ in range(500):
        rebuilds("".join(rng.choice(frags) for _ in range(rng.randrange(1, 40))))


def test_long_text_is_linear():
    text = "The creatinine is 1.2 mg/dL, e.g. normal. So the score is 4. " * 500  # ~31k chars
    t0 = time.perf_counter()
    sents = split(text)
    assert time.perf_counter() - t0 < 2.0
    assert len(sents) == 1000


@pytest.mark.parametrize("chunk, expected", [
    ("The sum is large. And then we", "The sum is large."),
    ("No cut point here", "No cut point here"),
    ("Value is 3.5 and 4. More text", "Value is 3.5 and 4. More text"),  # dot after a digit: no cut
    ("Check the patient. See Dr. Then", "Check the patient."),  # "Dr." looks like an abbreviation
    ("First sentence ended! Second", "First sentence ended!"),
    ("First sentence here! Second", "First sentence here! Second"),  # "here" is 1-4 letters: skipped
])
def test_truncate_to_sentence(chunk, expected):
    assert truncate_to_sentence(chunk) == expected
