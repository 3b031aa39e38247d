"""Sentence splitting throughput: cotransfer's splitter (method.md section 6) against plain pysbd
on the same texts, as a ratio, on short CoTs and on 30,000-character CoTs.

The texts are built from CoT-like sentences (numbers with decimals, abbreviations, list markers,
math, inline code), seeded. pysbd (`pip install pysbd`, not a dependency of the pipeline) is the
usual rule-based baseline; cotransfer's splitter additionally returns exact character spans.

    .venv/bin/python benchmarks/sentences/bench.py [--short 2000] [--long 20]
"""

from __future__ import annotations

import argparse
import random
import time

PIECES = [
    "The patient is 67 years old, so age contributes 1 point.",
    "Creatinine is 1.73 mg/dL (e.g. after hydration), which is high.",
    "Step 2: compute the BMI = 70 / 1.75^2 = 22.9 kg/m2.",
    "Dr. Smith noted a HR of 110 bpm; therefore tachycardia is present.",
    "- Hypertension: present\n- Diabetes: absent",
    "We use $x = 4 + 1$ here. Then multiply by 3.",
    "Call `score(1.5).round()` to check. Wait, that is wrong!",
    "So the total is 4 points... Let me re-check the criteria?",
]


def text(rng: random.Random, chars: int) -> str:
    out, n = [], 0
    while n < chars:
        s = rng.choice(PIECES)
        out.append(s)
        n += len(s) + 1
    return " ".join(out)[:chars]


def timed(fn, texts) -> float:
    t0 = time.perf_counter()
    for t in texts:
        fn(t)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", type=int, default=2000, help="short CoTs (300-1,500 characters)")
    ap.add_argument("--long", type=int, default=20, help="30,000-character CoTs")
    args = ap.parse_args()
    import pysbd

    from cotransfer.sentences import split

    rng = random.Random(0)
    sets = {"short": [text(rng, rng.randint(300, 1500)) for _ in range(args.short)],
            "long": [text(rng, 30_000) for _ in range(args.long)]}
    seg = pysbd.Segmenter(language="en", clean=False, char_span=False)
    ratios = []
    for name, texts in sets.items():
        chars = sum(map(len, texts))
        ours = timed(split, texts)
        base = timed(seg.segment, texts)
        ratios.append(base / ours)
        print(f"{name:5} {len(texts):5} texts, {chars / 1e6:5.2f} M chars: cotransfer {chars / ours / 1e6:6.2f} M chars/s, "
              f"pysbd {chars / base / 1e6:6.2f} M chars/s, ratio {base / ours:5.1f} x")
    print(f"sentences benchmark: cotransfer splits {ratios[0]:.1f} x (short) and {ratios[1]:.1f} x (30,000 characters) "
          f"as fast as pysbd")


if __name__ == "__main__":
    main()
