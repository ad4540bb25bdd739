"""A recorded run of the export tests that need llama.cpp (CI has no llama-cpp-python, so they skip there).

    python benchmarks/llamacpp_tests.py

Runs tests/test_llamacpp.py and tests/test_gguf.py (whose exports also verify in llama.cpp when it is
installed), with LOWTUNE_TEST_SMOLLM2_GGUF=1 so that SmolLM2's own f16 export runs too, and writes
benchmarks/results/llamacpp_tests.{json,md}: each test's outcome, the counts, the machine and the
llama-cpp-python version.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe, machine_info  # noqa: E402

FILES = ["tests/test_llamacpp.py", "tests/test_gguf.py"]


def main() -> None:
    from lowtune.export import llamacpp

    llamacpp.require("this record")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *FILES],
        cwd=ROOT,
        env={**os.environ, "LOWTUNE_TEST_SMOLLM2_GGUF": "1"},  # the real model's export too
        capture_output=True,
        text=True,
    )
    outcomes = re.findall(r"^(PASSED|FAILED|ERROR) (\S+)", done.stdout, re.M)
    skipped = re.findall(r"^SKIPPED \[\d+\] (\S+): (.*)$", done.stdout, re.M)
    outcomes += [("SKIPPED", f"{where}: {why}") for where, why in skipped]
    closing = done.stdout.strip().splitlines()[-1]
    info = machine_info(("transformers", "peft", "gguf", "llama_cpp"))
    report = {
        "benchmark": "llamacpp_tests",
        "machine": info,
        "llama_cpp": llamacpp.version(),
        "command": f"python -m pytest -q {' '.join(FILES)}",
        "exit_code": done.returncode,
        "summary": closing,
        "tests": [{"outcome": o, "test": t} for o, t in outcomes],
    }
    out = ROOT / "benchmarks" / "results" / "llamacpp_tests"
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"Machine: {describe(info)}; {report['llama_cpp']}", "", f"`{report['command']}`: {closing}", ""]
    lines += [f"- {o} `{t}`" for o, t in outcomes]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
