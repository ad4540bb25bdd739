"""Preference pairs ("this reply is better than that one") for reward modeling, DPO and ORPO, and KTO's
unpaired rows ("this reply is desirable", "this one is not").

Every format becomes one internal shape, TRL's conversational preference record with an explicit
prompt: {"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]}.

- `preference`: {"prompt", "chosen", "rejected"}. Strings are one user turn and one assistant reply;
  message lists (TRL's conversational form) are taken as they are.
- `preference_implicit`: {"chosen", "rejected"} only, two conversations that share every turn
  before the final reply (the shared turns become the prompt). Two plain strings split where
  they first differ, moved back to the last whitespace so no word is cut.
- `hh_rlhf`: Anthropic HH-RLHF transcripts, "\\n\\nHuman: …\\n\\nAssistant: …" in both fields; the
  shared turns become user/assistant messages, the final Assistant replies chosen and rejected.
- the builtin `arithmetic` task: chosen = the correct answer, rejected = a plausible wrong one
  (`arithmetic.wrong_answer`), deterministic by seed.

Held-out pairs for pairwise accuracy are the LAST rows of a file (by position, before any
shuffling), so train and test never overlap and anyone can rebuild the split; for arithmetic
they come from the task's held-out problems.

KTO (`load_unpaired`) reads `unpaired` rows {"prompt", "completion", "label": true/false} (prompt and
completion as for `preference`), or any of the pair formats above, each pair split into a desirable row (its
chosen reply) and an undesirable one (its rejected reply).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any

from lowtune.config import DataConfig
from lowtune.data import arithmetic
from lowtune.data.formats import HH_TURN, KINDS, detect_format
from lowtune.data.rows import RowError, messages_field, present, read_rows, validate
from lowtune.errors import LowtuneError

DEFAULT_HELDOUT = (0.1, 500)  # 10% of the rows, at most 500
# kind -> (what its data trains, what it needs)
_NEEDS = {
    "preference": (
        "a reward model or DPO/ORPO",
        "pairs in one of {} (fields prompt/chosen/rejected, or chosen/rejected)",
    ),
    "unpaired": ("KTO", "one of {} (fields prompt/completion/label, prompt/chosen/rejected, or chosen/rejected)"),
}
ARITHMETIC_HELDOUT = 100


@dataclass
class Unpaired:
    train: Any  # datasets.Dataset of {"prompt": [messages], "completion": [assistant message], "label": bool}
    format: str
    desirable: int
    undesirable: int
    skipped: list[str] = field(default_factory=list)  # "where: problem" for rows dropped by bad_rows=skip


@dataclass
class Pairs:
    train: Any  # datasets.Dataset of internal records
    heldout: Any | None  # the same, or None when nothing is held out
    format: str
    skipped: list[str] = field(default_factory=list)  # "where: problem" for rows dropped by bad_rows=skip


def load_pairs(cfg: DataConfig, system_prompt: str | None = None) -> Pairs:
    """Read, validate and split preference data into training and held-out pairs."""
    from datasets import Dataset

    if cfg.source == "arithmetic":
        train, heldout, fmt, skipped = _arithmetic_pairs(cfg), _arithmetic_heldout(cfg), "arithmetic", []
    else:
        rows, fmt = _rows(cfg, "preference")
        train, heldout, skipped = _file_pairs(cfg, rows, fmt)
    _add_system_prompt([*train, *heldout], system_prompt)
    return Pairs(Dataset.from_list(train), Dataset.from_list(heldout) if heldout else None, fmt, skipped)


def load_unpaired(cfg: DataConfig, system_prompt: str | None = None) -> Unpaired:
    """KTO's data: unpaired rows {"prompt", "completion", "label"} from an unpaired file, or from preference
    pairs, each split into a desirable and an undesirable row (`unpair`). Every row trains (no held-out part)."""
    from datasets import Dataset

    if cfg.source == "arithmetic":
        rows, fmt, skipped = unpair(_arithmetic_pairs(cfg)), "arithmetic", []
    else:
        read, fmt = _rows(cfg, "unpaired")
        if fmt == "unpaired":
            rows, skipped = _file_unpaired(cfg, read)
        else:
            train, _, skipped = _file_pairs(dataclasses.replace(cfg, heldout=0), read, fmt)
            rows = unpair(train)
    _add_system_prompt(rows, system_prompt)
    desirable = sum(r["label"] for r in rows)
    return Unpaired(Dataset.from_list(rows), fmt, desirable, len(rows) - desirable, skipped)


def unpair(pairs: list[dict]) -> list[dict]:
    """Each pair as a desirable row (its chosen reply) and an undesirable one (its rejected reply).

    TRL's KTO reads the rows in order, in batches, and estimates its KL term from each row's prompt with the
    previous row's completion (a batch's first row with its last row's), so that completion should answer another
    prompt. The labels alternate (a batch holds as many of each) and the undesirable rows run half the pairs
    behind: desirable i, then undesirable i - n/2, so no row meets its own prompt (with 3 pairs or more, in
    batches of up to n rows), nor a neighbouring pair's, which often shares it."""
    rows, half = [], len(pairs) // 2
    for i, pair in enumerate(pairs):
        behind = pairs[i - half]
        rows.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
        rows.append({"prompt": behind["prompt"], "completion": behind["rejected"], "label": False})
    return rows


def _rows(cfg: DataConfig, kind: str) -> tuple[list[tuple[str, dict]], str]:
    """A data file's (location, row) pairs and their format, one the method of `kind` reads."""
    rows = list(read_rows(cfg))
    if not rows:
        raise LowtuneError(f"{cfg.source}: no rows to train on")
    fmt = cfg.format if cfg.format != "auto" else detect_format(rows[0][1], rows[0][0], kind)
    if fmt not in KINDS[kind]:
        trains, needs = _NEEDS[kind]
        raise LowtuneError(
            f"{cfg.source}: {fmt} data cannot train {trains}; it needs {needs.format(', '.join(KINDS[kind]))}"
        )
    return rows, fmt


def _file_pairs(cfg: DataConfig, rows: list[tuple[str, dict]], fmt: str) -> tuple[list, list, list[str]]:
    """(training records, held-out records, skipped rows) of a preference file's rows."""
    n_heldout = heldout_size(cfg.heldout, len(rows))
    if n_heldout >= len(rows):
        raise LowtuneError(f"{cfg.source}: data.heldout={cfg.heldout} leaves no rows to train on ({len(rows)} rows)")
    train_rows, heldout_rows = rows[: len(rows) - n_heldout], rows[len(rows) - n_heldout :]
    if cfg.max_rows is not None and len(train_rows) > cfg.max_rows:
        train_rows = random.Random(cfg.seed).sample(train_rows, cfg.max_rows)
    # One validation pass over both parts, so every bad row is reported at once.
    held = {id(row) for _, row in heldout_rows}
    records, skipped = validate(
        train_rows + heldout_rows, fmt, lambda row, f: (id(row) in held, _record(row, f)), cfg.bad_rows
    )
    train = [r for is_held, r in records if not is_held]
    heldout = [r for is_held, r in records if is_held]
    if not train:
        raise LowtuneError(f"{cfg.source}: every training row was bad (listed above); nothing to train on")
    return train, heldout, skipped


def _file_unpaired(cfg: DataConfig, rows: list[tuple[str, dict]]) -> tuple[list[dict], list[str]]:
    """(records, skipped rows) of an unpaired file, shuffled by data.seed: TRL's KTO reads its rows in order, and
    a file sorted by label would give batches of one label."""
    if cfg.max_rows is not None and len(rows) > cfg.max_rows:
        rows = random.Random(cfg.seed).sample(rows, cfg.max_rows)
    records, skipped = validate(rows, "unpaired", _unpaired_record, cfg.bad_rows)
    labels = {r["label"] for r in records}
    if len(labels) < 2:
        only = "desirable (label true)" if True in labels else "undesirable (label false)"
        raise LowtuneError(
            f"KTO needs both desirable and undesirable examples: {cfg.source} has only {only} rows; "
            "add rows with the other label"
        )
    random.Random(cfg.seed).shuffle(records)
    return records, skipped


def _add_system_prompt(records: list[dict], system_prompt: str | None) -> None:
    if system_prompt:
        for r in records:
            if r["prompt"][0]["role"] != "system":
                r["prompt"] = [{"role": "system", "content": system_prompt}, *r["prompt"]]


def heldout_size(heldout: int | float | None, n_rows: int) -> int:
    if heldout is None:
        fraction, cap = DEFAULT_HELDOUT
        return min(cap, round(fraction * n_rows))
    if isinstance(heldout, float):
        return round(heldout * n_rows)
    return heldout


# ---------------------------------------------------------------- one row -> one record


def _record(row: dict, fmt: str) -> dict:
    if fmt == "preference":
        prompt = _prompt(row)
        chosen, rejected = _reply(row, "chosen"), _reply(row, "rejected")
    elif fmt == "hh_rlhf":
        prompt, chosen, rejected = _hh(row)
    else:
        prompt, chosen, rejected = _implicit(row)
    if chosen == rejected:
        raise RowError("field 'rejected' is identical to 'chosen': a pair must differ")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _unpaired_record(row: dict, fmt: str) -> dict:
    return {"prompt": _prompt(row), "completion": _reply(row, "completion"), "label": _label(row)}


def _label(row: dict) -> bool:
    """An unpaired row's label: true (desirable) or false (undesirable); CSV's strings "true"/"false" too."""
    value = present(row, "label")
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise RowError(f"field 'label' must be true (desirable) or false (undesirable), got {value!r}")
    return value


def _prompt(row: dict) -> list[dict]:
    prompt = present(row, "prompt")
    if isinstance(prompt, list):
        return messages_field(row, field="prompt", last_assistant=False)
    if not isinstance(prompt, str) or not prompt.strip():
        raise RowError("field 'prompt' must be a non-empty string or a list of messages")
    return [{"role": "user", "content": prompt}]


def _reply(row: dict, key: str) -> list[dict]:
    value = present(row, key)
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f"field '{key}' is an empty reply")
        return [{"role": "assistant", "content": value}]
    if isinstance(value, list):
        messages = messages_field(row, field=key, last_assistant=False)
        if messages[-1]["role"] != "assistant":
            raise RowError(f"field '{key}[{len(messages) - 1}].role': a reply must end with the assistant's turn")
        return messages
    raise RowError(f"field '{key}' must be a string or a list of messages, got {type(value).__name__}")


def _implicit(row: dict) -> tuple[list[dict], list[dict], list[dict]]:
    chosen, rejected = present(row, "chosen"), present(row, "rejected")
    if isinstance(chosen, str) and isinstance(rejected, str):
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        if shared < min(len(chosen), len(rejected)):
            while shared > 0 and not chosen[shared - 1].isspace():  # never split inside a word
                shared -= 1
        prompt = chosen[:shared]
        if not prompt.strip():
            raise RowError("fields 'chosen' and 'rejected' share no prompt text; give a 'prompt' field")
        row = {"prompt": prompt.rstrip(), "chosen": chosen[shared:], "rejected": rejected[shared:]}
        return _prompt(row), _reply(row, "chosen"), _reply(row, "rejected")
    if isinstance(chosen, list) and isinstance(rejected, list):
        chosen, rejected = (
            messages_field(row, "chosen", last_assistant=True),
            messages_field(row, "rejected", last_assistant=True),
        )
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == 0:
            raise RowError("fields 'chosen' and 'rejected' share no turns before the reply; give a 'prompt' field")
        return chosen[:shared], chosen[shared:], rejected[shared:]
    raise RowError("fields 'chosen' and 'rejected' must both be strings or both be lists of messages")


def _hh(row: dict) -> tuple[list[dict], list[dict], list[dict]]:
    chosen, rejected = _transcript(row, "chosen"), _transcript(row, "rejected")
    if chosen[:-1] != rejected[:-1]:
        turn = next(
            (i for i, (a, b) in enumerate(zip(chosen[:-1], rejected[:-1], strict=False)) if a != b),
            min(len(chosen), len(rejected)) - 1,
        )
        raise RowError(
            f"field 'rejected': the transcripts do not share a prefix (turn {turn + 1} differs); "
            "only the final Assistant reply may differ"
        )
    return chosen[:-1], chosen[-1:], rejected[-1:]


def _transcript(row: dict, key: str) -> list[dict]:
    text = present(row, key)
    if not isinstance(text, str):
        raise RowError(f"field '{key}' must be a transcript string, got {type(text).__name__}")
    try:
        return transcript_turns(text)
    except ValueError as e:
        raise RowError(f"field '{key}': {e}") from None


def transcript_turns(text: str) -> list[dict]:
    """An HH-RLHF transcript as user/assistant messages; ValueError says what is wrong with it."""
    parts = HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 5:
        raise ValueError("not a transcript starting '\\n\\nHuman: ' and ending with an Assistant reply")
    turns = [
        {"role": "user" if role == "Human" else "assistant", "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]
    if turns[0]["role"] != "user" or turns[-1]["role"] != "assistant":
        raise ValueError("a transcript must start with a Human turn and end with an Assistant reply")
    if not turns[-1]["content"]:
        raise ValueError("the final Assistant reply is empty")
    for i, t in enumerate(turns[:-1]):
        if not t["content"]:
            raise ValueError(f"turn {i + 1} is empty")
    return turns


# ---------------------------------------------------------------- the builtin arithmetic pairs


def _arithmetic_pairs(cfg: DataConfig) -> list[dict]:
    rng = random.Random(f"pairs-{cfg.seed}")
    problems = arithmetic.train(cfg.n_train, cfg.digits, cfg.operations, cfg.seed, cfg.operands)
    return [arithmetic.preference_pair(p, rng) for p in problems]


def _arithmetic_heldout(cfg: DataConfig) -> list[dict]:
    n = cfg.heldout if isinstance(cfg.heldout, int) else ARITHMETIC_HELDOUT
    if isinstance(cfg.heldout, float):
        n = round(cfg.heldout * cfg.n_train)
    rng = random.Random(f"pairs-heldout-{arithmetic.HELDOUT_SEED}")  # the same pairs whatever the training seed
    return [arithmetic.preference_pair(p, rng) for p in arithmetic.heldout(n, cfg.digits, cfg.operations, cfg.operands)]
