"""benchmarks/logprobs.py: its TFLOP/s and matmul-share arithmetic, run order, partial results and the tiny shape."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import logprobs as bench  # noqa: E402

LLAMA = [8192, 4096, 128256]


def _row(variant: str, time_s: float, peak_mib: float = 100.0, mode: str = "fwd+bwd") -> dict:
    return {"shape": "Llama-3-8B", "nhv": LLAMA, "variant": variant, "mode": mode, "time_s": time_s,
            "times_s": [time_s], "peak_mib": peak_mib, "others_cores": 0.0}  # fmt: skip


def _report(rows: list[dict], matmul_tflops: float | None) -> dict:
    matmul = {"n": 8192, "tflops": matmul_tflops} if matmul_tflops else {"skipped": "timed out after 60 s"}
    machine = {"gpu": "NVIDIA H200", "torch": "2.x", "trl": "1.16.0"}
    return {"machine": machine, "device": "cuda", "dtype": "bfloat16", "runs": 3, "results": rows,
            "matmul": matmul, "matmul_tflops": matmul_tflops}  # fmt: skip


def test_tflops_of_a_fabricated_row_is_4nhv_over_time_and_its_share_of_the_matmul_rate():
    # 4 · 8,192 · 4,096 · 128,256 = 17,214,228,922,368 FLOPs in 0.5 s
    assert bench.flops(_row("lowtune", 0.5)) == 17_214_228_922_368
    assert bench.tflops(_row("lowtune", 0.5)) == pytest.approx(34.428457844736, rel=1e-12)
    assert bench.tflops(_row("lowtune", 0.25, mode="fwd")) == pytest.approx(34.428457844736, rel=1e-12)  # 2·N·H·V
    assert bench.share(_row("lowtune", 0.5), {"matmul_tflops": 68.856915689472}) == pytest.approx(0.5, rel=1e-12)
    assert bench.share(_row("lowtune", 0.5), {"matmul_tflops": None}) is None


def test_table_shows_tflops_with_the_share_and_the_target_verdict():
    # matmul rate 86.07 TFLOP/s: lowtune at 34.43 is 40%, 10 points short; it must take ≤ 0.4 s
    rows = [_row("lowtune", 0.5, 50.0), _row("trl_chunked", 1.0, 900.0), _row("liger_flce", 0.4, 40.0)]
    table = bench.markdown(_report(rows, 86.07114461184))
    assert "| Llama-3-8B (8,192, 4,096, 128,256) | lowtune | – | – | – | 0.50 s | 50 MiB | 34.4 (40%) |" in table
    assert "| trl_chunked | – | – | – | 1.00 s | 900 MiB | 17.2 (20%) |" in table
    assert "Matmul rate: 86.1 TFLOP/s (8,192×8,192 @ 8,192×8,192 in bfloat16" in table
    assert (
        "- matmul share: 40.0% vs ≥ 50% (34.4 of 86.1 TFLOP/s, 0.500 s): **NOT met**: needs ≤ 0.400 s, -10.0 points"
        in table
    )
    assert "- time ≤ trl_chunked's: 0.500 vs 1.000 s (0.50×): met" in table
    assert "- time ≤ liger_flce's: 0.500 vs 0.400 s (1.25×): **NOT met**" in table
    assert "- memory ≤ liger_flce's: 50 vs 40 MiB (1.25×): **NOT met**" in table
    table = bench.markdown(_report(rows, 57.38076307456))  # lowtune at 60%
    assert "| 34.4 (60%) |" in table and "- matmul share: 60.0% vs ≥ 50%" in table and ": met, +10.0 points" in table
    table = bench.markdown(_report(rows, None))  # no matmul rate: TFLOP/s without a share
    assert "| 34.4 |" in table and "Matmul rate timed out after 60 s: no shares." in table


def test_headline_rows_run_first_after_the_matmul_rate_and_each_row_is_saved(tmp_path, monkeypatch):
    calls = []

    def fake_measure(args, extra, deadline):
        calls.append(extra)
        if len(calls) == 5:
            raise KeyboardInterrupt  # the window closes mid-run
        if extra[:2] == ["--mode", "matmul"]:
            return {"n": 8192, "time_s": 0.002, "tflops": 549.755813888, "others_cores": 0.0}
        return {"time_s": 0.1, "times_s": [0.1], "peak_mib": 10.0, "others_cores": 0.0}

    monkeypatch.setattr(bench, "measure", fake_measure)
    monkeypatch.setattr(bench, "machine_info", lambda packages: {"gpu": "fake", "torch": "2.x", "trl": "1.16.0"})
    monkeypatch.setattr(bench, "unavailable", lambda variant, device: None)
    args = argparse.Namespace(device="cuda", dtype="bfloat16", runs=3, shapes=None, variants=None, modes=None,
                              budget=None, matmul_n=8192, out=tmp_path)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        bench.run_all(args)
    assert calls[0] == ["--mode", "matmul", "--matmul-n", "8192"]
    order = [(c[1], c[3], c[5]) for c in calls[1:]]
    assert order == [("Llama-3-8B", v, "fwd+bwd") for v in ["lowtune", "trl_chunked", "liger_flce"]] + [
        ("SmolLM2-135M", "naive", "fwd")  # then shape by shape; the smoke-test shape is not in a CUDA run
    ]
    saved = json.loads((tmp_path / "logprobs_cuda.json").read_text())
    assert saved["matmul_tflops"] == 549.755813888
    assert [r["variant"] for r in saved["results"]] == ["lowtune", "trl_chunked", "liger_flce"]
    assert saved["results"][0]["tflops"] == pytest.approx(172.14228922368)
    assert saved["results"][0]["matmul_share"] == pytest.approx(172.14228922368 / 549.755813888)
    assert "Target (issue 22)" in (tmp_path / "logprobs_cuda.md").read_text()


def _run(tmp_path: Path, *extra: str) -> tuple[dict, str]:
    out = tmp_path / "results"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "logprobs.py"), "--device", "cpu", "--shapes", "tiny"]
    cmd += ["--variants", "naive", "lowtune", "--runs", "1", "--max-others", "99", "--out", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "logprobs.json").read_text()), (out / "logprobs.md").read_text()


def test_tiny_cpu_run_records_the_matmul_rate_and_each_rows_share(tmp_path):
    report, table = _run(tmp_path, "--matmul-n", "256")
    mm = report["matmul"]
    assert mm["n"] == 256 and report["matmul_tflops"] == mm["tflops"] == pytest.approx(2 * 256**3 / mm["time_s"] / 1e12)
    rows = report["results"]
    assert [(r["variant"], r["mode"]) for r in rows] == [(v, m) for v in ("naive", "lowtune") for m in bench.MODES]
    for r in rows:
        assert r["tflops"] == pytest.approx(bench.flops(r) / r["time_s"] / 1e12)
        assert r["matmul_share"] == pytest.approx(r["tflops"] / report["matmul_tflops"])
        assert f"{r['tflops']:.3g} ({r['matmul_share']:.0%})" in table
    assert "fwd+bwd TFLOP/s" in table and "not measured here (needs `--device cuda`)" in table


def test_a_worker_past_its_timeout_is_skipped_and_the_run_goes_on(tmp_path):
    report, table = _run(tmp_path, "--timeout", "0.001")
    assert report["matmul"] == {"skipped": "timed out after 0.001 s"} and report["matmul_tflops"] is None
    assert [r["skipped"] for r in report["results"]] == ["timed out after 0.001 s"] * 4
    report, _ = _run(tmp_path, "--budget", "0")
    assert {r["skipped"] for r in report["results"]} == {"time budget spent (--budget)"}
