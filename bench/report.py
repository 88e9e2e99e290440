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


SPEED_FILES = ("tournament_bench-25m_float32", "tournament_bench-25m_bfloat16",
               "tournament_qwen2.5-0.5b_bfloat16", "tournament_qwen2.5-0.5b_float32",
               "generate_bench-25m_float32", "generate_qwen2.5-0.5b_bfloat16",
               "generate_qwen2.5-0.5b_float32")


def baseline_cell(r: dict, name: str, best_key: str) -> str:
    if name not in r:
        return "-"
    b = r[name]
    return (f"{b['seconds']:.1f} ({b[best_key]}): **{b['speedup_first_run']:.2f}x** / "
            f"{b['speedup_warm_run']:.2f}x")


def speed(results: list[dict]) -> list[str]:
    out = ["**Speed against HF `generate` and llama.cpp, each at its best** "
           "(`bench/bench_tournament.py`, `bench/bench_generate.py`, `--model`, `--dtype`): "
           "random-weight Qwen2 models of the named shapes. The tournament round is the "
           "knockout's first round, 8 questions x 16 candidates = 64 judge prompts (600-token "
           "template, 60-token question, two candidates of 100-300 tokens), 64 greedy tokens; "
           "generation is 32 unshared prompts of 50-300 tokens, 64 greedy tokens. kojudge runs "
           "in a fresh process: its first run is what `kojudge judge` sees; HF and llama.cpp "
           "are warmed up first. Each baseline is timed at every batch size / slot count and "
           "flash-attention setting listed in the JSON; the best is kept. Ratios: baseline "
           "time over kojudge's first run / warm run. The first `Engine()` finds the "
           "tokenizer cached, as any earlier process that loaded the model leaves it (the "
           "first ever imports transformers to build it: 0.7 s more). "
           f"{machine_line(results[0])}.", "",
           "| workload | model, dtype | kojudge first / warm (s) | first `Engine()` / later (s) "
           "| HF best (s, batch): ratio | llama.cpp best (s, setting): ratio | identical greedy "
           "tokens: HF / llama.cpp (first tokens) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        k = r["kojudge"]
        same = [r[n]["identical_to_kojudge"] if n in r else "-" for n in ("hf", "llama_cpp")]
        if "llama_cpp" in r:
            same[-1] += f" ({r['llama_cpp']['first_tokens_identical_to_kojudge']})"
        out.append(f"| {r['benchmark'].split('_')[0]} | {r['model']}, {r['dtype']} | "
                   f"{k['first_run_seconds']:.1f} / {k['warm_run_seconds']:.1f} | "
                   f"{k['engine_seconds']:.2f} / {k['later_engine_seconds']:.2f}"
                   f"{'' if k.get('tokenizer_from_cache', True) else ' (tokenizer not cached)'} | "
                   f"{baseline_cell(r, 'hf', 'best_batch')} | "
                   f"{baseline_cell(r, 'llama_cpp', 'best_setting')} | {' / '.join(same)} |")
    out += ["", "Where kojudge's warm run spends its time, by step kind (bench/step_profile.py), "
                "and how close the round comes to the machine's limits:", "",
            "| workload | model, dtype | step kind | seconds | linear | attention | LM head | "
            "other torch ops | host (Python, scheduling, sampling) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for kind, p in r["kojudge"]["profile"].items():
            shares = " | ".join(f"{100 * p[c] / p['total']:.0f}%" for c in
                                ("linear", "attention", "lm_head", "other_torch", "host"))
            out.append(f"| {r['benchmark'].split('_')[0]} | {r['model']}, {r['dtype']} | {kind} "
                       f"({p['steps']} steps) | {p['total']:.1f} | {shares} |")
    out.append("")
    for r in results:
        if "limit_fraction_warm" not in r:
            continue
        decode = r["decode_64x1024_shared"]
        out.append(f"- {r['model']}, {r['dtype']}: matmul peak {peak_cell(r)} GFLOP/s; the "
                   f"round's unique work at that peak takes {r['ideal_seconds']:.1f} s, kojudge "
                   f"reaches {100 * r['limit_fraction_warm']:.0f}% of that limit warm "
                   f"({100 * r['limit_fraction_first_run']:.0f}% first run); pure prefill steps "
                   f"at {100 * r['prefill_peak_fraction']:.0f}% of the peak; decode of 64 "
                   "sequences sharing 1k tokens at "
                   f"{100 * decode['cascade']['roofline_fraction']:.0f}% (cascade) / "
                   f"{100 * decode['no_cascade']['roofline_fraction']:.0f}% (without); computed "
                   f"/ unique prompt tokens {r['computed_over_unique']:.3f}.")
    return out


def logprobs(lp: dict) -> list[str]:
    return [f"**Chosen-token log-probs, forward + backward** (`bench/bench_logprobs.py`): "
            f"T={lp['tokens']}, V={lp['vocab']}, H={lp['hidden']}, bf16 inputs: naive peak "
            f"{lp['naive']['peak_mib']:.0f} MiB, chunked {lp['chunked']['peak_mib']:.0f} MiB = "
            f"**{lp['peak_ratio_chunked_over_naive']:.3f}x** of naive (goal <= 0.125); time "
            f"{lp['naive']['seconds']:.1f}s vs {lp['chunked']['seconds']:.1f}s."]


def sft_vs_trl(sft: dict) -> list[str]:
    return [f"**SFT throughput vs TRL `SFTTrainer`** (`bench/bench_sft.py`, bench extra `trl`): "
            f"same model and {sft['tokens']} tokens of conversations, batch {sft['batch']}, float32: "
            f"kojudge {sft['kojudge_tokens_per_s']:.0f} tok/s, TRL {sft['trl_tokens_per_s']:.0f} "
            f"tok/s: **{sft['speedup_vs_trl']:.2f}x** (goal >= 1.5x)."]


def grpo_toy(grpo: dict) -> list[str]:
    return [f"**GRPO-PAR on the toy preference task** (`bench/bench_grpo.py`): mean PAR reward "
            f"{grpo['par_first_quarter']:.2f} -> {grpo['par_last_quarter']:.2f} (first vs last "
            f"quarter of {len(grpo['steps'])} steps), pair accuracy "
            f"{grpo['pair_accuracy_first_quarter']:.2f} -> "
            f"{grpo['pair_accuracy_last_quarter']:.2f}.", "",
            "![GRPO-PAR curve](bench/results/grpo_toy.png)"]


def simulation(sim: dict) -> list[str]:
    ns = list(sim["by_n"])
    out = [f"**Tournament formats, simulated judge, uncalibrated** (`bench/simulate_tournaments.py`, "
           f"{sim['questions']} questions per N, judge verification accuracy "
           f"{sim['judge_accuracy']:.2f}): best-of-N accuracy (judge calls per question).", "",
           "| format | " + " | ".join(f"N={n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
    for name in sim["by_n"][ns[0]]:
        cells = [sim["by_n"][n][name] for n in ns]
        out.append(f"| {name} | " + " | ".join(
            f"{c['accuracy']:.3f} ({c['calls_per_question']:.1f})" for c in cells) + " |")
    return out + ["", "![accuracy vs calls and tokens](bench/results/tournament_simulation.png)",
                  "![judge accuracy sweep](bench/results/tournament_judge_accuracy_sweep.png)"]


def simulator_calibration(cal: dict) -> list[str]:
    judge = cal["judge"]
    accuracy = ", ".join(f"{v:.3f}" for v in cal["judge_accuracy"].values())
    out = [f"**Simulator calibrated to the PairJudge paper** (`bench/calibrate_simulator.py`, "
           f"{cal['questions']} simulated questions a cell): each policy's pass@1 as published, its "
           "difficulty spread and wrong-answer clustering fitted to its majority-vote cells, one "
           f"judge (right labelled correct {judge['tpr']:.2f}, wrong labelled incorrect "
           f"{judge['tnr']:.2f}, at chance on a question with probability (1 - solve rate)^"
           f"{judge['hardness']:.2f}, first-shown bias {judge['bias']:.2f}) fitted to the knockout "
           f"cells. Fit error over all 18 cells **{100 * cal['rmse']:.2f} points RMSE**; fitted on "
           f"N = 16 and 32 only, it predicts the six N = 64 cells to "
           f"**{100 * cal['held_out']['rmse']:.2f} points RMSE**. The fitted judge's verification "
           f"accuracy on the three policies' candidates comes out at {accuracy} (not fitted; the "
           "paper measured 0.704 on Qwen-2.5-7B's).", "",
           "| policy | N | majority vote: published | predicted | knockout: published | predicted |",
           "|---|---|---|---|---|---|"]
    cells = {(c["policy"], c["n"], c["method"]): c for c in cal["cells"]}
    for policy, n in dict.fromkeys((c["policy"], c["n"]) for c in cal["cells"]):
        vote, knock = cells[(policy, n, "majority vote")], cells[(policy, n, "knockout")]
        out.append(f"| {policy} | {n} | {100 * vote['published']:.1f} | {100 * vote['predicted']:.1f}"
                   f" | {100 * knock['published']:.1f} | {100 * knock['predicted']:.1f} |")
    judged = [f for f in next(iter(cal["best_within_budget"].values()))
              if any(b[f] is not None for b in cal["best_within_budget"].values())]
    out += ["", f"Formats at a fixed budget of judge calls ({cal['formats_policy']}-like "
                "candidates, the fitted judge; the best accuracy each reaches within the budget "
                "over N = 4 ... 64):", "",
            "| calls per question | " + " | ".join(judged) + " |", "|---|" + "---|" * len(judged)]
    for budget, best in cal["best_within_budget"].items():
        out.append(f"| {budget} | " + " | ".join("-" if best[f] is None else f"{best[f]:.3f}"
                                                 for f in judged) + " |")
    return out + ["", "![formats on the calibrated simulator](bench/results/simulator_formats.png)",
                  "![knockout scaling against the Chen et al. bound]"
                  "(bench/results/simulator_scaling.png)"]


def wilson(accuracy: float, count: int) -> tuple[float, float]:
    """The Wilson score 95% interval of an accuracy over `count` questions (unlike the normal
    approximation, not of width 0 at 0 or 1)."""
    z = 1.96
    centre = (accuracy + z * z / (2 * count)) / (1 + z * z / count)
    half = z * (accuracy * (1 - accuracy) / count + z * z / (4 * count * count)) ** 0.5
    half /= 1 + z * z / count
    return max(0.0, centre - half), min(1.0, centre + half)


def interval(accuracy: float, count: int) -> str:
    low, high = wilson(accuracy, count)
    return f"{accuracy:.3f} [{low:.3f}, {high:.3f}]"


def demo_judge_study(study: dict) -> list[str]:
    what = f"N={study['n']}"
    if study.get("solve_beta"):
        alpha, beta = study["solve_beta"]
        what += (f" and per-question solve rates ~ Beta({alpha:g}, {beta:g}), so a few right "
                 "candidates stand among many clustered wrong ones")
    if study.get("temperature"):
        what += (f", judgments sampled at temperature {study['temperature']:g} (a noisy judge: "
                 "where orders, samples and more matches can pay)")
    flags = "" if study["benchmark"] == "demo_judge_study" else f" --setting {study['benchmark']}"
    out = [f"**Tournament formats, real judge** (`bench/study_demo_judge.py{flags}`): the shipped "
           f"demo judge through the engine on {study['questions']} held-out questions, {what}; "
           f"{machine_line(study)}. The last column is the format's accuracy minus the "
           "knockout's on the same questions, with a paired bootstrap 95% interval.", "",
           "| format | best-of-N accuracy (95% CI) | judge calls per question | wall time (s) | "
           "cached prompt tokens | verdicts right (right / wrong candidates) | vs knockout |",
           "|---|---|---|---|---|---|---|"]
    count = study["questions"]
    for name, row in study["formats"].items():
        cached = f"{100 * row['cached_prompt_ratio']:.0f}%" if "cached_prompt_ratio" in row else "-"
        verdicts = row.get("verdict_accuracy")
        verdicts = f"{verdicts['right']:.2f} / {verdicts['wrong']:.2f}" if verdicts else "-"
        paired = row["vs_knockout"]
        paired = ("-" if name == "knockout" else
                  f"{paired['difference']:+.3f} [{paired['low']:+.3f}, {paired['high']:+.3f}]")
        out.append(f"| {name} | {interval(row['accuracy'], count)} | "
                   f"{row['calls_per_question']:.1f} | {row['seconds']:.0f} | {cached} | "
                   f"{verdicts} | {paired} |")
    out += [f"| {name} (no judge) | {interval(value, count)} | 0 | - | - | - | - |"
            for name, value in study["baselines"].items()]
    image = study["benchmark"]
    return out + ["", separated(study), "",
                  f"![formats with the demo judge](bench/results/{image}.png)"]


def separated(study: dict) -> str:
    """Which formats this study tells apart: pairs whose own 95% intervals do not overlap."""
    count = study["questions"]
    bounds = {name: wilson(row["accuracy"], count) for name, row in study["formats"].items()}
    apart = [f"{a} < {b}" for a in bounds for b in bounds if bounds[a][1] < bounds[b][0]]
    if not apart:
        return "No two formats' 95% intervals are apart here."
    return "Formats whose 95% intervals do not overlap: " + "; ".join(apart) + "."


def demo_judge_calibration(cal: dict) -> list[str]:
    out = [f"**Verdict confidence, real judge** (`bench/demo_judge_calibration.py`): the shipped demo "
           f"judge on {cal['questions']} held-out questions, N={cal['n']}; p(correct) of "
           f"{cal['sides']} judged sides (both orders) against how often the side is right: "
           f"expected calibration error **{cal['ece']:.3f}**; {machine_line(cal)}.", "",
           "| knockout variant | best-of-N accuracy | judge calls per question | order-flip rate |",
           "|---|---|---|---|"]
    for name, row in cal["variants"].items():
        flips = "-" if row["flip_rate"] is None else f"{row['flip_rate']:.3f}"
        out.append(f"| {name} | {row['accuracy']:.3f} | {row['calls_per_question']:.1f} | {flips} |")
    return out + ["", "![reliability of the demo judge's confidence]"
                      "(bench/results/demo_judge_calibration.png)"]


def patarm_experiment(exp: dict) -> list[str]:
    results = exp["results"]
    trained = [name for name in ("graded", "constant") if name in results]
    sampling = (f"{exp['rollouts']} rollouts per side at temperature {exp['temperature']:g}, "
                f"{exp['pairs_per_batch']} pairs a step, " if "rollouts" in exp else "")
    out = ["**PaTaRM's claim, GRPO-PAR from pairwise preferences alone** "
           "(`bench/patarm_experiment.py`): the shipped demo judge after a format-only warm-up "
           f"({exp['warmup_steps']} SFT steps on pointwise judgments whose scores are random "
           f"placeholders), then {exp['grpo_steps']} GRPO-PAR steps (lr {exp['grpo_lr']:g}, "
           f"KL coefficient {exp.get('kl_coef', 0):g}, "
           f"{sampling}{' and '.join(trained)} f from the same start) on (right, wrong) "
           "candidate pairs; held-out questions, scores sampled as in training; "
           f"{machine_line(exp)}, {exp['minutes']:.0f} minutes in all.", "",
           "| judge | pointwise pair accuracy (pairs) | best-of-8 accuracy, pointwise mean vote | "
           "valid-score rate |", "|---|---|---|---|"]
    labels = {"start": "start (after the warm-up)",
              "shipped (real-score SFT)": "the shipped judge (its SFT saw real scores): a ceiling",
              "control: graded f, preferences reversed":
                  "control: GRPO-PAR, graded f, told the wrong candidate is preferred"}
    for name, row in results.items():
        label = labels.get(name, f"GRPO-PAR, {name} f")
        out.append(f"| {label} | {interval(row['pair_accuracy'], row['pairs'])} ({row['pairs']}) "
                   f"| {interval(row['best_of_8_accuracy'], row['questions'])} | "
                   f"{row['valid_score_rate']:.3f} |")
    gain = max(results[f]["pair_accuracy"] for f in trained)
    gain -= results["start"]["pair_accuracy"]
    verdict = ("The claim is reproduced here" if gain >= 0.1 else
               "Not reproduced by this run: GRPO-PAR learned the format, not to score correctness")
    out += ["", f"{verdict} (best held-out pair-accuracy change {gain:+.3f})."]
    return out + ["", "![GRPO-PAR curves, graded vs constant f](bench/results/patarm_experiment.png)"]


def demo_judge_training(training: dict) -> list[str]:
    if not training.get("grpo_steps"):
        return []
    stages = (("check_loss", "the check alone"), ("compare_loss", "the check and the comparison"))
    curriculum = "".join(f"{len(training[key])} steps on {what}, " for key, what in stages
                         if training.get(key))
    return [f"**Demo judge training** (`bench/demo_judge_curves.py`): {curriculum}"
            f"{training['sft_steps']} SFT steps, then {training['grpo_steps']} GRPO-PAR steps; mean "
            f"PAR reward {training['par_first_quarter']:.2f} -> {training['par_last_quarter']:.2f} "
            f"(first vs last quarter), pair accuracy {training['pair_accuracy_first_quarter']:.2f} "
            f"-> {training['pair_accuracy_last_quarter']:.2f}.", "",
            "![demo judge training](bench/results/demo_judge_training.png)"]


def gpu_kernels(gpu: dict | None) -> list[str]:
    if gpu:
        return [f"**GPU kernels** (`bench/gpu_kernels.py`): run on {gpu['machine'].get('gpu')}; see "
                "bench/results/gpu_kernels.json."]
    return ["**GPU kernels** (`bench/gpu_kernels.py`): ready to run in one go on a lent GPU with "
            "the kernel and backend tests (`scripts/fetch_gpu_wheels.sh` here, then "
            "`scripts/gpu_check.sh` there); not run yet (no GPU has been lent to this project)."]


# (result files, paragraph): a paragraph is written when its results exist.
PARAGRAPHS = [
    (SPEED_FILES, speed),
    ("logprobs_memory_cpu", logprobs),
    ("sft_vs_trl", sft_vs_trl),
    ("grpo_toy", grpo_toy),
    ("tournament_simulation", simulation),
    ("simulator_calibration", simulator_calibration),
    ("demo_judge_study", demo_judge_study),
    ("demo_judge_study_hard", demo_judge_study),
    ("demo_judge_study_noisy", demo_judge_study),
    ("demo_judge_calibration", demo_judge_calibration),
    ("demo_judge_training", demo_judge_training),
    ("patarm_experiment", patarm_experiment),
]


def section() -> str:
    out = []
    for names, paragraph in PARAGRAPHS:
        if isinstance(names, tuple):
            results = [r for r in map(load, names) if r]
            lines = paragraph(results) if results else []
        else:
            result = load(names)
            lines = paragraph(result) if result else []
        if lines:
            out += lines + [""]
    return "\n".join(out + gpu_kernels(load("gpu_kernels")))


def demo_section() -> str:
    study = load("demo_judge_study")
    if not study:
        return ""
    return (f"What `kojudge demo` printed ({machine_line(study)}; `python bench/study_demo_judge.py` reruns it):\n\n"
            f"```\n{study['demo_table']}\n```\n\nThe cached prompt tokens include the verdict-confidence "
            "scoring requests, which start on the judgments' own cached blocks.")


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
