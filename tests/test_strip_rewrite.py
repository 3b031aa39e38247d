"""Answer removal in rewrite mode (method.md 5): the reply mapped back to the original
sentences, and the strip stage's filter call in that mode."""



def test_rewrite_mode_maps_the_reply_back_to_original_sentences_in_order():
    from cotransfer.sentences import split as split_text
    from cotransfer.strip import parse_rewrite_output, rewrite_prompt, strip_with_drops

    cot = "Start with 4.  Add 2 to get 6.\nThen 6*5 = 0. So the answer is 0."
    sents = split_text(cot)
    assert len(sents) == 4
    # case, spacing and a trailing period do not matter; the answer sentence is gone
    drop, status, unmatched = parse_rewrite_output("start with 4\nAdd 2 to  get 6. Then 6*5 = 0.", sents)
    assert (drop, status, unmatched) == ({3}, "ok", 0)
    out = strip_with_drops(cot, drop, sentences=sents)
    assert out.text == "Start with 4. Add 2 to get 6. Then 6*5 = 0."  # the original spans, byte for byte
    # a paraphrase or an added sentence is discarded and counted; a reordering keeps the order
    drop, _, unmatched = parse_rewrite_output("Begin with four. Then 6*5 = 0. Start with 4. The end.", sents)
    assert drop == {0, 1, 3} and unmatched == 3
    assert parse_rewrite_output("", sents) == (set(), "bad_filter_output", 0)
    assert parse_rewrite_output(None, sents)[1] == "bad_filter_output"
    assert cot in rewrite_prompt(cot)[1]["content"]


def test_filter_model_drops_in_rewrite_mode_budget_and_mapping(demo_config):
    """The strip stage's filter call in rewrite mode: the CoT goes in as text, the reply budget is
    the CoT's own length plus the margin, and the reply is mapped back to the original sentences."""
    from cotransfer import stages
    from cotransfer.config import Study, validate
    from cotransfer.engine import Completion
    from cotransfer.sentences import split as split_text
    from cotransfer.strip import FILTER_REPLY_MARGIN
    from test_formats import Tok

    class Engine:
        tokenizer = Tok()

        def __init__(self):
            self.requests = []

        def count_tokens(self, text):
            return len(text.split())

        def generate(self, requests, what=""):
            self.requests += requests
            return [Completion("Start with 4. Add 2 to get 6.", 5, "stop")] * len(requests)

    demo_config["aux_models"] = {"filter": {"family": "plain", "toy": {"seed": 3}}}
    demo_config["strip"] = {"method": "llm", "model": "filter", "mode": "rewrite"}
    study = Study.from_dict(validate(demo_config))
    cot = "Start with 4. Add 2 to get 6. The answer is 6."
    engine = Engine()
    [(drop, status, unmatched)] = stages._filter_model_drops(study, engine, [split_text(cot)], [cot])
    assert (drop, status, unmatched) == ({2}, "ok", 0)
    (req,) = engine.requests
    assert cot in req.prompt and req.max_tokens == 12 + FILTER_REPLY_MARGIN
    demo_config["strip"]["mode"] = "index"
    [(drop, status, unmatched)] = stages._filter_model_drops(Study.from_dict(validate(demo_config)), Engine(),
                                                             [split_text(cot)], [cot])
    assert status == "bad_filter_output" and unmatched is None  # that reply is no JSON list


def test_qc_counts_unmatched_reply_sentences_only_in_rewrite_mode():
    import polars as pl

    from cotransfer import metrics

    base = {"dataset": ["d"] * 2, "n_in": [3, 3], "n_out": [2, 2], "char_ratio": [0.7, 0.7],
            "token_ratio": [0.6, 0.8], "status": ["ok", "ok"], "answer_still_present": [False, False]}
    rewrite = pl.DataFrame({**base, "cot_source": ["a", "a"], "unmatched": [1, 2]})
    index = pl.DataFrame({**base, "cot_source": ["b", "b"], "unmatched": [None, None]},
                         schema_overrides={"unmatched": pl.Int64})
    qc = {r["cot_source"]: r for r in metrics.strip_qc(pl.concat([rewrite, index]), "default").iter_rows(named=True)}
    assert qc["a"]["unmatched_sentences"] == 3 and qc["b"]["unmatched_sentences"] is None
    assert qc["a"]["token_ratio"] == 0.7
