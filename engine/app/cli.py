"""The `kojudge` command line."""
from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from kojudge.app.jobs import (ResultWriter, finished_ids, merge_shards, rank_and_world, read_jsonl,
                              shard_path)
from kojudge.demo.run import SHIPPED_JUDGE, run_demo
from kojudge.judging.pairjudge import STOP, BestOfN, PairJudge
from kojudge.judging.parsers import POINTWISE_STOP
from kojudge.judging.pointwise import PointwiseJudge
from kojudge.model.tiny import make_tiny_model
from kojudge.runtime.config import EngineConfig
from kojudge.runtime.engine import Engine, PromptTooLong
from kojudge.runtime.sampling import SamplingParams
from kojudge.train.config import GRPOConfig, SFTConfig, load_train_config
from kojudge.train.distributed import close_distributed
from kojudge.train.grpo import train_grpo
from kojudge.train.sft import train_sft
from kojudge.utils import process_device

BENCHMARKS = {  # name -> (script, arguments); `kojudge bench` runs them in order, then the report
    "generate": [("bench_generate.py", []), ("bench_generate.py", ["--dtype", "bfloat16"])],
    "tournament": [("bench_tournament.py", []), ("bench_tournament.py", ["--dtype", "bfloat16"])],
    "logprobs": [("bench_logprobs.py", [])],
    "simulation": [("simulate_tournaments.py", [])],
    "demo_judge": [("study_demo_judge.py", [])],
    "sft": [("bench_sft.py", [])],
    "grpo": [("bench_grpo.py", [])],
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


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """The job flags that configure the engine."""
    return EngineConfig(dtype=args.dtype, device=process_device(args.device),
                        max_num_seqs=args.max_num_seqs,
                        max_num_batched_tokens=args.max_batched_tokens,
                        attention_backend=args.attention_backend)


Process = Callable[[Engine, list[dict], ResultWriter, tqdm], None]


def run_sharded(args: argparse.Namespace, items: list[dict], process: Process) -> None:
    """The job loop: this rank's share of the items, finished ids skipped, results appended as
    they finish by `process(engine, todo, writer, progress)`; rank 0 merges the shards."""
    rank, world = rank_and_world()
    output = Path(args.output)
    path = shard_path(output, rank, world)
    done = finished_ids(path) if args.resume else set()
    todo = [item for item in items[rank::world] if item["id"] not in done]
    writer = ResultWriter(path, resume=args.resume)
    desc = f"{args.command} (rank {rank})" if world > 1 else args.command
    try:
        with tqdm(total=len(todo), desc=desc, unit="item") as progress:
            if todo:
                process(Engine(args.model, config=engine_config(args)), todo, writer, progress)
    finally:
        writer.close()
    if world > 1:
        Path(f"{path}.done").touch()
        if rank == 0:
            merge_shards(output, world, [item["id"] for item in items])


@contextlib.contextmanager
def naming_items(path: str, items: list[dict]):
    """A judge prompt too long for the model, named by its input file and item id."""
    try:
        yield
    except PromptTooLong as exc:
        raise ValueError(f"{path}: item {items[exc.index]['id']!r}: {exc.detail}") from None


def judge_record(item: dict, best: BestOfN) -> dict:
    matches = [{"round": m.round, "a": m.a, "b": m.b, "advanced": m.advanced,
                "a_score": m.a_score, "b_score": m.b_score} for m in best.result.matches]
    return {"id": item["id"], "winner": best.winner, "judge_calls": best.judge_calls,
            "rounds": best.result.rounds, "teams": best.teams, "matches": matches,
            "judgments": best.judgments}


def judge(args: argparse.Namespace) -> None:
    """Best-of-N by a pairwise judge over a JSONL of {id, question, candidates}."""
    items = read_jsonl(args.input, {"question": str, "candidates": list})

    def process(engine: Engine, todo: list[dict], writer: ResultWriter, progress: tqdm) -> None:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                                stop=[STOP], include_stop_str_in_output=True)
        pair_judge = PairJudge(engine, template=args.template, params=params, format=args.format,
                               group_by_answer=not args.no_teams, both_orders=args.both_orders,
                               samples=args.samples)

        def on_result(index: int, best: BestOfN) -> None:
            writer.write(judge_record(todo[index], best))
            progress.update(1)

        questions = [(item["question"], item["candidates"]) for item in todo]
        with naming_items(args.input, todo):
            pair_judge.best_of_n_many(questions, seed=args.seed, on_result=on_result)

    run_sharded(args, items, process)


def score(args: argparse.Namespace) -> None:
    """Pointwise rubric scores over a JSONL of {id, prompt, response | responses, [domain]}."""
    items = read_jsonl(args.input, {"prompt": str})
    for item in items:
        responses = item.get("responses", [item["response"]] if "response" in item else None)
        if not responses or not all(isinstance(r, str) for r in responses):
            raise ValueError(f"{args.input}: item {item['id']!r}: needs 'response' (string) or "
                             "'responses' (list of strings)")
        item["responses"] = responses
    run_sharded(args, items, lambda *job: score_items(args, *job))


def score_items(args: argparse.Namespace, engine: Engine, todo: list[dict], writer: ResultWriter,
                progress: tqdm) -> None:
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=0.95,
                            stop=[POINTWISE_STOP], include_stop_str_in_output=True)
    scorer = PointwiseJudge(engine, params=params, template=args.template)
    every_response = [item for item in todo for _ in item["responses"]]
    pairs = [(item["prompt"], r) for item in todo for r in item["responses"]]
    domains = [item.get("domain", args.domain) for item in every_response]
    with naming_items(args.input, every_response):  # all of them checked before any work starts
        prompts = iter(scorer.pointwise_prompts(pairs, domains))
    for start in range(0, len(todo), args.batch):
        chunk = todo[start: start + args.batch]
        chunk_prompts = [next(prompts) for item in chunk for _ in item["responses"]]
        results = iter(scorer.score_prompts(chunk_prompts, n=args.n, vote_method=args.vote,
                                            seed=args.seed))
        for item in chunk:
            mine = [next(results) for _ in item["responses"]]
            writer.write({"id": item["id"], "scores": [r.score for r in mine],
                          "rollout_scores": [r.rollout_scores for r in mine],
                          "format_rewards": [r.format_rewards for r in mine]})
            progress.update(1)


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
        args.func(args)
    except (ValueError, FileNotFoundError) as exc:  # bad input: one clear line, no traceback
        parser.exit(2, f"kojudge {args.command}: error: {exc}\n")


if __name__ == "__main__":
    main()
