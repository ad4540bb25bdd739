"""Dataset loading and per-method schema checks.

Formats (one table, `lowtune.data.formats`; docs/data.md shows each with an example row):

- `messages`: {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}; the last
  turn is the assistant's. For SFT it becomes a conversational prompt/completion pair (all turns
  before the last assistant reply / that reply), so the loss covers the final reply only. With tool
  calls (TRL's tool-calling format: assistant `tool_calls`, `tool` messages, a `tools` column of JSON
  schemas) the completion is the whole exchange after the last user turn: calls, results and reply.
- `prompt_completion`: {"prompt": str, "completion": str}; loss on the completion.
- `text`: {"text": str}; loss on every token.
- `prompt_answer`: {"prompt": str or messages, "answer": str or number}; for GRPO (rewards compare
  against `answer`).
- `gsm8k`: {"question": str, "answer": "...reasoning... #### 72"}; GRPO gets the question and the
  number after `####`; SFT learns the reasoning (calculator annotations `<<48/2=24>>` removed).

Preference pairs (`preference`, `preference_implicit`, `hh_rlhf`) for reward modeling, DPO and ORPO, and
KTO's `unpaired` rows ({"prompt", "completion", "label": true/false}) are described in
`lowtune.data.preference`.

Every row is checked before training; all bad rows are reported as `file:line: field: problem`
and nothing trains. A configured system prompt is prepended to prompts that have none.

Modules: `readers` (data files), `rows` (rows from any source, `RowError` and `validate`), `formats`
(the one format table and `detect_format`), `records` (`load`: rows with one reply), `preference`
(`load_pairs`, `load_unpaired`), `arithmetic`, `multistep` and `arithmetic_text` (the builtin tasks), `gsm8k`
(GSM8K rows as held-out problems).
"""

from lowtune.data.formats import FORMATS, KINDS, detect_format
from lowtune.data.preference import Pairs, Unpaired, load_pairs, load_unpaired
from lowtune.data.records import load
from lowtune.data.rows import RowError, read_rows, validate

__all__ = [
    "FORMATS", "KINDS", "Pairs", "RowError", "Unpaired", "detect_format", "load", "load_pairs", "load_unpaired",
    "read_rows", "validate",
]  # fmt: skip
