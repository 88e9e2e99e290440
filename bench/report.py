"""Regenerates the benchmark section of README.md from bench/results/*.json.

    python bench/report.py
"""
from __future__ import annotations

import json
import re
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
README = Path(__file__).parent.parent / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
DEMO_START, DEMO_END = "<!-- demo:start -->", "<!-- demo:end -->"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def machine_line(result: dict) -> str:
    m = result["machine"]
    return f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({result['date']})"


def peak_cell(result: dict) -> str:
    peaks = result.get("matmul_peaks_gflops", {})
    aten = f" (torch matmul {peaks['aten']:.0f})" if "aten" in peaks and peaks["aten"] < result["matmul_peak_gflops"] else ""
    return f"{result['matmul_peak_gflops']:.0f}{aten}"


def section() -> str:
    out = []
    gen = [r for r in (load("generate_float32"), load("generate_bfloat16")) if r]
    if gen:
        out += ["**Plain batched generation vs HF `generate`** (`bench/bench_generate.py`): "
                f"{gen[0]['params'] / 1e6:.1f}M-parameter Qwen2-shaped model, {gen[0]['batch']} prompts of 50-300 "
                f"tokens, {gen[0]['new_tokens']} greedy tokens; {machine_line(gen[0])}.", "",
                "| dtype | HF tok/s | kojudge tok/s | speedup | identical greedy outputs |", "|---|---|---|---|---|"]
        out += [f"| {r['dtype']} | {r['hf_tok_per_s']:.0f} | {r['kojudge_tok_per_s']:.0f} | {r['speedup']:.2f}x | "
                f"{r['identical_outputs']} |" for r in gen]
        out.append("")
    tour = [r for r in (load("tournament_float32"), load("tournament_bfloat16")) if r]
    if tour:
        out += ["**Tournament workload** (`bench/bench_tournament.py`): the knockout's first round, 8 questions x 16 "
                "candidates = 64 judge calls, 600-token template, 60-token questions, candidates of 100-300 tokens, "
                f"64 greedy tokens; same model; {machine_line(tour[0])}. The matmul peak is the faster of torch's "
                "matmul and oneDNN on a packed weight (1024^3, best of 20; torch's float32 matmul is MKL, under half "
                "as fast here); 'ideal' is HF's time over the unique "
                "work at that peak; the decode fraction uses the median step.", "",
                "| dtype | judge calls/s: kojudge | no cache/cascade | HF | speedup vs HF | ideal | computed / unique "
                "prompt tokens | identical to HF | matmul peak GFLOP/s | decode 64 x 1k shared: % of matmul peak "
                "(cascade / none) |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for r in tour:
            c = r["judge_calls_per_s"]
            d = r["decode_64x1024_shared"]
            out.append(f"| {r['dtype']} | {c['kojudge']:.2f} | {c['kojudge_no_cache']:.2f} | {c['hf']:.2f} | "
                       f"{r['speedup_vs_hf']:.2f}x | {r['ideal_speedup_vs_hf']:.2f}x | {r['computed_over_unique']:.3f} | "
                       f"{r['identical_outputs_vs_hf']} | {peak_cell(r)} | "
                       f"{100 * d['cascade']['roofline_fraction']:.0f}% / "
                       f"{100 * d['no_cascade']['roofline_fraction']:.0f}% |")
        out.append("")
    lp = load("logprobs_memory_cpu")
    if lp:
        out += [f"**Chosen-token log-probs, forward + backward** (`bench/bench_logprobs.py`): T={lp['tokens']}, "
                f"V={lp['vocab']}, H={lp['hidden']}, bf16 inputs: naive peak {lp['naive']['peak_mib']:.0f} MiB, "
                f"chunked {lp['chunked']['peak_mib']:.0f} MiB = **{lp['peak_ratio_chunked_over_naive']:.3f}x** of naive "
                f"(goal <= 0.125); time {lp['naive']['seconds']:.1f}s vs {lp['chunked']['seconds']:.1f}s.", ""]
    sft = load("sft_vs_trl")
    if sft:
        out += [f"**SFT throughput vs TRL `SFTTrainer`** (`bench/bench_sft.py`, bench extra `trl`): same model and "
                f"{sft['tokens']} tokens of conversations, batch {sft['batch']}, float32: kojudge "
                f"{sft['kojudge_tokens_per_s']:.0f} tok/s, TRL {sft['trl_tokens_per_s']:.0f} tok/s: "
                f"**{sft['speedup_vs_trl']:.2f}x** (goal >= 1.5x).", ""]
    grpo = load("grpo_toy")
    if grpo:
        out += [f"**GRPO-PAR on the toy preference task** (`bench/bench_grpo.py`): mean PAR reward "
                f"{grpo['par_first_quarter']:.2f} -> {grpo['par_last_quarter']:.2f} (first vs last quarter of "
                f"{len(grpo['steps'])} steps), pair accuracy {grpo['pair_accuracy_first_quarter']:.2f} -> "
                f"{grpo['pair_accuracy_last_quarter']:.2f}.", "", "![GRPO-PAR curve](bench/results/grpo_toy.png)", ""]
    sim = load("tournament_simulation")
    if sim:
        ns = list(sim["by_n"])
        out += [f"**Tournament formats, simulated judge** (`bench/simulate_tournaments.py`, {sim['questions']} "
                f"questions per N, judge verification accuracy {sim['judge_accuracy']:.2f}): best-of-N accuracy "
                "(judge calls per question).", "",
                "| format | " + " | ".join(f"N={n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
        for name in sim["by_n"][ns[0]]:
            out.append(f"| {name} | " + " | ".join(
                f"{sim['by_n'][n][name]['accuracy']:.3f} ({sim['by_n'][n][name]['calls_per_question']:.1f})" for n in ns)
                + " |")
        out += ["", "![accuracy vs calls and tokens](bench/results/tournament_simulation.png)",
                "![judge accuracy sweep](bench/results/tournament_judge_accuracy_sweep.png)", ""]
    study = load("demo_judge_study")
    if study:
        out += [f"**Tournament formats, real judge** (`bench/study_demo_judge.py`): the shipped demo judge through the "
                f"engine on {study['questions']} held-out questions, N={study['n']}; {machine_line(study)}.", "",
                "| format | best-of-N accuracy | judge calls per question | wall time (s) | cached prompt tokens |",
                "|---|---|---|---|---|"]
        for name, row in study["formats"].items():
            cached = f"{100 * row['cached_prompt_ratio']:.0f}%" if "cached_prompt_ratio" in row else "-"
            out.append(f"| {name} | {row['accuracy']:.3f} | {row['calls_per_question']:.1f} | {row['seconds']:.0f} | "
                       f"{cached} |")
        out += [f"| {name} (no judge) | {value:.3f} | 0 | - | - |" for name, value in study["baselines"].items()]
        out += ["", "![formats with the demo judge](bench/results/demo_judge_study.png)", ""]
    training = load("demo_judge_training")
    if training and training.get("grpo_steps"):
        curriculum = "".join(f"{len(training[key])} steps on {what}, " for key, what in
                             (("check_loss", "the check alone"), ("compare_loss", "the check and the comparison"))
                             if training.get(key))
        out += [f"**Demo judge training** (`bench/demo_judge_curves.py`): {curriculum}{training['sft_steps']} SFT steps, then "
                f"{training['grpo_steps']} GRPO-PAR steps; mean PAR reward {training['par_first_quarter']:.2f} -> "
                f"{training['par_last_quarter']:.2f} (first vs last quarter), pair accuracy "
                f"{training['pair_accuracy_first_quarter']:.2f} -> {training['pair_accuracy_last_quarter']:.2f}.", "",
                "![demo judge training](bench/results/demo_judge_training.png)", ""]
    gpu = load("gpu_kernels")
    out.append("**GPU kernels** (`bench/gpu_kernels.py`): " + (
        f"run on {gpu['machine'].get('gpu')}; see bench/results/gpu_kernels.json." if gpu else
        "ready to run in one go on a lent GPU with the kernel and backend tests (`scripts/fetch_gpu_wheels.sh` "
        "here, then `scripts/gpu_check.sh` there); not run yet (no GPU has been lent to this project)."))
    return "\n".join(out)


def demo_section() -> str:
    study = load("demo_judge_study")
    if not study:
        return ""
    return (f"What `kojudge demo` printed ({machine_line(study)}; `python bench/study_demo_judge.py` reruns it):\n\n"
            f"```\n{study['demo_table']}\n```")


def replace_between(text: str, start: str, end: str, body: str) -> str:
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{README} has no {start} ... {end} section")
    return pattern.sub(lambda _: f"{start}\n{body}\n{end}", text)


def main() -> None:
    text = replace_between(README.read_text(), START, END, section())
    README.write_text(replace_between(text, DEMO_START, DEMO_END, demo_section()))
    print(f"updated {README}")


if __name__ == "__main__":
    main()
