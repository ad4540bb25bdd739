"""The data formats lowtune reads, which kind of training each one feeds, and how a format is detected.

Rows with one reply (SFT, and prompts for GRPO/RLOO/PPO/online DPO) and preference pairs (reward modeling,
DPO, ORPO) are two families; KTO reads pairs or unpaired rows (a reply labelled desirable or undesirable). With
data.format=auto the first row's columns pick a format of the family the method reads, trying FORMATS in order,
so data of the other kind is named and refused ("text data cannot train a reward model") rather than misread.
Unpaired rows are told apart by every family: they hold a prompt and a completion too, and must never train SFT
on their undesirable replies.
"""

from __future__ import annotations

import re

from lowtune.errors import LowtuneError

# name: the columns that identify it
FORMATS = {
    "messages": ("messages",),
    "unpaired": ("prompt", "completion", "label"),  # before prompt_completion, whose columns it has
    "prompt_completion": ("prompt", "completion"),
    "prompt_answer": ("prompt", "answer"),
    "gsm8k": ("question", "answer"),
    "text": ("text",),
    "preference": ("prompt", "chosen", "rejected"),
    "preference_implicit": ("chosen", "rejected"),  # that are not transcripts
    "hh_rlhf": ("chosen", "rejected"),  # "\n\nHuman: ...\n\nAssistant: ..." transcripts
}
PAIR_FORMATS = ("preference", "preference_implicit", "hh_rlhf")
# Which formats each kind of training data accepts.
KINDS = {
    "sft": ("messages", "prompt_completion", "text", "gsm8k"),
    "prompt": ("messages", "prompt_answer", "gsm8k"),
    "preference": PAIR_FORMATS,
    "unpaired": ("unpaired", *PAIR_FORMATS),  # KTO: each pair becomes a desirable and an undesirable row
}
ROLES = ("system", "user", "assistant", "tool")
HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
# beyond their columns, what the two kinds of pairs without a prompt hold
_HOLDS = {
    "preference_implicit": lambda row: not is_transcript(row["chosen"]),
    "hh_rlhf": lambda row: is_transcript(row["chosen"]),
}
# what a row of each kind is called in an error, and the columns it is expected to have
_EXPECTED = {
    "sft": ("data", "messages, prompt + completion, or text"),
    "prompt": ("data", "messages, prompt + completion, or text"),
    "preference": ("preference", "prompt + chosen + rejected, or chosen + rejected"),
    "unpaired": ("KTO", "prompt + completion + label, prompt + chosen + rejected, or chosen + rejected"),
}


def is_transcript(value) -> bool:
    """Whether a column holds an Anthropic HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...")."""
    return isinstance(value, str) and bool(HH_TURN.search(value)) and "Human:" in value


def detect_format(row: dict, where: str, kind: str = "sft") -> str:
    """The format of `row` (found at `where`) among those of the family that `kind` reads."""
    pairs = kind in ("preference", "unpaired")
    for fmt, keys in FORMATS.items():
        family = fmt == "unpaired" or (fmt in PAIR_FORMATS) == pairs
        if family and all(k in row for k in keys) and (fmt not in _HOLDS or _HOLDS[fmt](row)):
            return fmt
    what, expected = _EXPECTED[kind]
    raise LowtuneError(
        f"{where}: cannot tell the {what} format from columns {sorted(row)}; expected {expected} (or set data.format)"
    )
