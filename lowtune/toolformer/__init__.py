"""Toolformer (Schick et al. 2023, arXiv 2302.04761): teach a model to call tools by writing the calls into text.

- `calls`: the call syntax, `[Calculator(400 / 1400) -> 0.29]` (parse, format, strip, the tokens that open one).
- `filter`: the numbers: p("[") at each position, and the weighted-loss filter that keeps a call when its
  result makes the following tokens likelier.
- `augment`: `Augmenter`, which drives a model through sampling positions and calls, running them and
  filtering; `write_results` and `STATS_COLUMNS` for `lowtune augment`.
- `tool_calls`: the same calls in the ecosystem's format (assistant `tool_calls`, `tool` messages, a `tools`
  column of JSON schemas) that chat templates render and TRL trains on; a ChatML template with tools.
- `generate`: `generate_with_tools`, decoding that runs a call when the model writes one: natively when the
  chat template has tools, else inline.

The tools themselves are `lowtune.tools`.
"""
