"""The `kojudge` command line."""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from kojudge.app.commands import judge, score
from kojudge.demo.run import SHIPPED_JUDGE, run_demo
from kojudge.model.tiny import make_tiny_model
from kojudge.runtime.engine import Engine
from kojudge.runtime.sampling import SamplingParams
from kojudge.train.config import GRPOConfig, SFTConfig, load_train_config
from kojudge.train.distributed import close_distributed
from kojudge.train.grpo import train_grpo
from kojudge.train.sft import train_sft

BENCHMARKS = {  # name -> (script, arguments); `kojudge bench` runs them in order, then the report
    "generate": [("bench_generate.py", ["--model", "qwen2.5-0.5b", "--dtype", "bfloat16",
                                        "--repeats", "1", "--hf-batches", "8", "32",
                                        "--llama-slots", "16", "--llama-flash", "on"])],
    "tournament": [("bench_tournament.py", []),
                   ("bench_tournament.py", ["--model", "qwen2.5-0.5b", "--dtype", "bfloat16",
                                            "--repeats", "1", "--hf-batches", "8",
                                            "--llama-slots", "16", "--llama-flash", "on"])],
    "logprobs": [("bench_logprobs.py", [])],
    "simulation": [("simulate_tournaments.py", []), ("calibrate_simulator.py", [])],
    "demo_judge": [("study_demo_judge.py", []),
                   ("study_demo_judge.py", ["--setting", "demo_judge_study_hard"]),
                   ("study_demo_judge.py", ["--setting", "demo_judge_study_noisy"]),
                   ("demo_judge_calibration.py", [])],
    "sft": [("bench_sft.py", [])],
    "grpo": [("bench_grpo.py", []), ("patarm_experiment.py", [])],
}


def demo(args: argparse.Namespace) -> None:
    """Best-of-N with the shipped (or given) judge on held-out synthetic questions; without a
    judge, a generation smoke run on a tiny random model."""
    judge = args.judge
    if judge is None and (SHIPPED_JUDGE / "judge_template.md").exists():
        judge = SHIPPED_JUDGE
    if judge is not None:
        print(run_demo(judge, questions=args.questions, n=args.n, seed=args.seed, dtype=args.dtype,
                       pointwise_samples=args.pointwise_samples).table())
        return
    print(f"no demo judge found at {SHIPPED_JUDGE}: running a generation smoke test on a tiny "
          "random model")
    smoke(args)


def smoke(args: argparse.Namespace) -> None:
    """Make a tiny random model, generate a batch with continuous batching, print stats."""
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_model(tmp, "qwen2", hidden_size=128, num_layers=4, num_heads=4,
                                    num_kv_heads=2, intermediate_size=256)
        engine = Engine(model_dir, dtype=args.dtype)
        template = "Question {i}: compare the two responses step by step and give the final answer."
        prompts = [template.format(i=i) for i in range(64)]
        start = time.perf_counter()
        outs = engine.generate(prompts, SamplingParams(max_tokens=64, ignore_eos=True),
                               use_tqdm=True)
        elapsed = time.perf_counter() - start
    stats = engine.stats()
    tokens = stats["generated_tokens"]
    print(f"{len(outs)} requests, {tokens} tokens in {elapsed:.2f}s "
          f"({tokens / elapsed:.0f} tok/s); prompt tokens {stats['prompt_tokens']}, "
          f"computed {stats['computed_prompt_tokens']}, "
          f"from cache {stats['cached_prompt_tokens']}")
    print(f"first output: {outs[0].text[:80]!r}")


def bench(args: argparse.Namespace) -> None:
    """Runs the benchmark scripts of a source checkout's bench/ and regenerates the README."""
    bench_dir = Path(__file__).resolve().parents[2] / "bench"
    if not (bench_dir / "report.py").exists():
        raise FileNotFoundError(f"{bench_dir}: kojudge bench runs the scripts of a source "
                                "checkout's bench/ folder")
    unknown = sorted(set(args.only or []) - set(BENCHMARKS))
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; known: {sorted(BENCHMARKS)}")
    for name in args.only or BENCHMARKS:
        for script, extra in BENCHMARKS[name]:
            print(f"== {name}: {script} {' '.join(extra)}", flush=True)
            subprocess.run([sys.executable, str(bench_dir / script), *extra], check=True)
    subprocess.run([sys.executable, str(bench_dir / "report.py")], check=True)


def train(args: argparse.Namespace) -> None:
    """SFT or GRPO-PAR from a YAML / JSON config; under torchrun, FSDP2 across the processes."""
    if args.stage == "sft":
        train_sft(load_train_config(args.config, SFTConfig), progress=not args.no_progress)
    else:
        train_grpo(load_train_config(args.config, GRPOConfig), progress=not args.no_progress)
    close_distributed()


def add_job_parser(sub: argparse._SubParsersAction, name: str,
                   help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--model", required=True, help="local HF model directory of the judge")
    p.add_argument("--input", required=True, help="JSONL input")
    p.add_argument("--output", required=True, help="JSONL output, one line per finished item")
    p.add_argument("--resume", action="store_true",
                   help="keep finished items of --output and skip them")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu",
                   help="cpu | cuda (under torchrun: one GPU per process)")
    p.add_argument("--attention-backend", choices=["torch", "triton", "flashinfer"],
                   help="default: torch on CPU, triton on CUDA; flashinfer needs the gpu extra, "
                        "CUDA and 16 bits")
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-num-seqs", type=int, default=256,
                   help="engine: most requests decoded at once")
    p.add_argument("--max-batched-tokens", type=int, default=2048,
                   help="engine: token budget per step")
    p.add_argument("--on-error", default="continue", choices=["continue", "stop"],
                   help="continue: a bad item becomes an {id, error} line and the job goes on, "
                        "ending with exit status 1; stop: it ends the job before any work")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kojudge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo",
                       help="best-of-N with the demo judge on held-out synthetic questions")
    p.add_argument("--judge",
                   help="a judge directory with judge_template.md (default: the shipped one)")
    p.add_argument("--questions", type=int, default=200)
    p.add_argument("--n", type=int, default=8, help="candidates per question")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pointwise-samples", type=int, default=4,
                   help="sampled pointwise scores per candidate")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.set_defaults(func=demo)
    p = add_job_parser(sub, "judge",
                       "best-of-N by pairwise tournament: {id, question, candidates} " "per line")
    p.add_argument("--format", default="knockout", choices=["knockout", "round_robin", "swiss"])
    p.add_argument("--template", help="pairwise template file with {question}, {response_a}, "
                                      "{response_b} (default: the model directory's "
                                      "judge_template.md if any, else built in)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--both-orders", action="store_true", help="judge every pair in both orders")
    p.add_argument("--samples", type=int, default=1, help="judgments per match, combined by vote")
    p.add_argument("--no-teams", action="store_true",
                   help="do not group candidates by final answer")
    p.add_argument("--no-confidence", action="store_true",
                   help="do not score each side's p(correct) from the judge's label probabilities")
    p.add_argument("--pairing", default="random_bye", choices=["random_bye", "largest_team_bye"],
                   help="knockout: who gets the bye of an odd round (the paper's: random)")
    p.add_argument("--tie-break", default="random", choices=["random", "confidence"],
                   help="knockout: who advances from a both-correct match")
    p.add_argument("--gate-flips", action="store_true",
                   help="knockout, with --both-orders: a match whose verdicts flip with the order "
                        "is a tie broken by confidence")
    p.set_defaults(func=judge)
    p = add_job_parser(sub, "score", "pointwise rubric scores: {id, prompt, response|responses, "
                                     "[domain]} per line")
    p.add_argument("--n", type=int, default=8, help="rollouts per response")
    p.add_argument("--vote", default="mean", choices=["mean", "majority"])
    p.add_argument("--domain", default="chat",
                   help="default domain (chat, math, code, safety, instruction_following)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--batch", type=int, default=16, help="items per batch between writes")
    p.add_argument("--template", help="pointwise template file with {prompt}, {response} and "
                                      "optionally {rubric} (default: the model directory's "
                                      "pointwise_template.md if any, else PaTaRM's)")
    p.set_defaults(func=score)
    p = sub.add_parser("bench", help="run the benchmarks in bench/ and regenerate the README")
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help=f"a subset of: {', '.join(BENCHMARKS)}")
    p.set_defaults(func=bench)
    p = sub.add_parser("train",
                       help="train a judge: sft | grpo (torchrun for more than one process)")
    p.add_argument("stage", choices=["sft", "grpo"])
    p.add_argument("--config", required=True, help="YAML or JSON file with the stage's settings")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=train)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        failed = args.func(args)
    except (ValueError, FileNotFoundError) as exc:  # bad input: one clear line, no traceback
        parser.exit(2, f"kojudge {args.command}: error: {exc}\n")
    if failed:
        parser.exit(1, f"kojudge {args.command}: {failed} item(s) failed; their error lines are "
                       f"in {args.output}\n")


if __name__ == "__main__":
    main()
