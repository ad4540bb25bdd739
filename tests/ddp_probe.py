"""`lowtune train` with each process's training rows recorded: run by tests/test_distributed.py under
`accelerate launch` (or alone). Usage: python ddp_probe.py OUT_DIR lowtune-train-arguments..."""

import json
import os
import sys
from pathlib import Path

import transformers
from trl.experimental.online_dpo import OnlineDPOTrainer

from lowtune.cli import main

out = Path(sys.argv[1])

originals = {cls: cls.training_step for cls in (transformers.Trainer, OnlineDPOTrainer)}  # online DPO has its own


def training_step(self, model, inputs, *args, **kwargs):
    """Record the rows this process trains on at this step, then train as usual."""
    if isinstance(inputs, list):  # GRPO: the prompts, before generation
        rows = [str(x.get("prompt")) for x in inputs]
    elif "prompt" in inputs:  # online DPO: the prompts, before generation
        rows = [str(x) for x in inputs["prompt"]]
    else:
        ids = inputs.get("input_ids", inputs.get("chosen_input_ids"))
        mask = inputs.get("attention_mask", inputs.get("chosen_attention_mask"))
        rows = [[t for t, m in zip(r, k, strict=True) if m] for r, k in zip(ids.tolist(), mask.tolist(), strict=True)]
    with (out / f"rows-rank{os.environ.get('RANK', '0')}.jsonl").open("a") as f:
        f.write(json.dumps({"step": self.state.global_step, "rows": rows}) + "\n")
    original = originals[OnlineDPOTrainer if isinstance(self, OnlineDPOTrainer) else transformers.Trainer]
    return original(self, model, inputs, *args, **kwargs)


for cls in originals:
    cls.training_step = training_step
sys.exit(main(["train", *sys.argv[2:]]))
