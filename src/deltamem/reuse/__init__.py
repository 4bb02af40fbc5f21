"""Answer reuse across questions: a new CONTEXT row may take an answered one's answer instead of a call.

    db.generate("answers", prompt="Answer.", context=questions, data_source=docs, reuse="semantic", max_error=0.02)

- ``rewrite``: the canonical form a question is matched by (text, one-directional relation synonyms, the order of
  symmetric alternatives).
- ``policy``: per-entry thresholds learned from checks and the bound that keeps wrong reuses under ``max_error``.
- ``answers``: the view's candidates, its decisions and the checks they record in the view's state.
- ``agreement``: when two answers say the same (SQuAD normalisation, then equality).

A reused answer's provenance is its source's: when DATA_SOURCE changes, the source is refreshed by the view's
strategy, and each row that reused it follows (its answer reads the same) or is decided again (it changed or left).
"""
