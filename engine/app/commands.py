"""The `judge` and `score` commands: each rank's share of a JSONL input through one engine,
results written as they finish, a bad item an error line of its own."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from kojudge.app.jobs import (ResultWriter, finished_ids, merge_shards, rank_and_world, read_jsonl,
                              shard_path)
from kojudge.judging.pairjudge import STOP, BestOfN, PairJudge
from kojudge.judging.parsers import POINTWISE_STOP
from kojudge.judging.pointwise import PointwiseJudge
from kojudge.runtime.config import EngineConfig
from kojudge.runtime.engine import Engine
from kojudge.runtime.intake import PromptTooLong
from kojudge.runtime.sampling import SamplingParams
from kojudge.utils import process_device


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """The job flags that configure the engine."""
    return EngineConfig(dtype=args.dtype, device=process_device(args.device),
                        max_num_seqs=args.max_num_seqs,
                        max_num_batched_tokens=args.max_batched_tokens,
                        attention_backend=args.attention_backend)


class Job:
    """One rank's share of a job's items, results appended as they finish. A bad item ends the
    job before any work (--on-error stop) or becomes an {"id", "error"} line of its own."""

    def __init__(self, args: argparse.Namespace, writer: ResultWriter, progress: tqdm):
        self.args = args
        self.writer = writer
        self.progress = progress
        self.failed = 0

    def write(self, record: dict) -> None:
        self.writer.write(record)
        self.progress.update(1)

    def reject(self, item: dict, message: str) -> None:
        if self.args.on_error == "stop":
            raise ValueError(message)
        self.write({"id": item["id"], "error": message})
        self.failed += 1


Process = Callable[[Engine, list[dict], Job], None]


def run_sharded(args: argparse.Namespace, items: list[dict], process: Process) -> int:
    """The job loop: this rank's share of the items, finished ids skipped, the rest handed to
    `process(engine, todo, job)`; rank 0 merges the shards. Returns the items that failed."""
    rank, world = rank_and_world()
    output = Path(args.output)
    path = shard_path(output, rank, world)
    done = finished_ids(path) if args.resume else set()
    todo = [item for item in items[rank::world] if item["id"] not in done]
    writer = ResultWriter(path, resume=args.resume)
    desc = f"{args.command} (rank {rank})" if world > 1 else args.command
    try:
        with tqdm(total=len(todo), desc=desc, unit="item") as progress:
            job = Job(args, writer, progress)
            for item in todo:
                if "error" in item:  # a line that could not be read
                    job.reject(item, item["error"])
            todo = [item for item in todo if "error" not in item]
            if todo:
                process(Engine(args.model, config=engine_config(args)), todo, job)
    finally:
        writer.close()
    if world > 1:
        Path(f"{path}.done").touch()
        if rank == 0:
            merge_shards(output, world, [item["id"] for item in items])
    return job.failed


def item_error(args: argparse.Namespace, item: dict, detail: str) -> str:
    return f"{args.input}: item {item['id']!r}: {detail}"


def judge_record(item: dict, best: BestOfN) -> dict:
    matches = [{"round": m.round, "a": m.a, "b": m.b, "advanced": m.advanced,
                "a_score": m.a_score, "b_score": m.b_score, "a_confidence": m.a_confidence,
                "b_confidence": m.b_confidence, "flipped": m.flipped}
               for m in best.result.matches]
    return {"id": item["id"], "winner": best.winner, "judge_calls": best.judge_calls,
            "rounds": best.result.rounds, "teams": best.teams, "flip_rate": best.flip_rate,
            "matches": matches, "judgments": best.judgments}


def judge(args: argparse.Namespace) -> int:
    """Best-of-N by a pairwise judge over a JSONL of {id, question, candidates}."""
    items = read_jsonl(args.input, {"question": str, "candidates": list},
                       keep_bad=args.on_error == "continue")
    position = {item["id"]: index for index, item in enumerate(items)}

    def process(engine: Engine, todo: list[dict], job: Job) -> None:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                                stop=[STOP], include_stop_str_in_output=True)
        pair_judge = PairJudge(engine, template=args.template, params=params, format=args.format,
                               group_by_answer=not args.no_teams, both_orders=args.both_orders,
                               samples=args.samples, confidence=not args.no_confidence,
                               pairing=args.pairing, tie_break=args.tie_break,
                               gate_flips=args.gate_flips)
        good = []
        for item in todo:  # every item checked before any work starts
            try:
                pair_judge.check_item(position[item["id"]], item["question"], item["candidates"])
                good.append(item)
            except PromptTooLong as exc:
                job.reject(item, item_error(args, item, exc.detail))
        questions = [(item["question"], item["candidates"]) for item in good]
        pair_judge.best_of_n_many(questions, seed=args.seed,
                                  on_result=lambda i, best: job.write(judge_record(good[i], best)),
                                  indices=[position[item["id"]] for item in good])

    return run_sharded(args, items, process)


def score(args: argparse.Namespace) -> int:
    """Pointwise rubric scores over a JSONL of {id, prompt, response | responses, [domain]}."""
    items = read_jsonl(args.input, {"prompt": str}, keep_bad=args.on_error == "continue")
    return run_sharded(args, items, lambda *job: score_items(args, *job))


def score_items(args: argparse.Namespace, engine: Engine, todo: list[dict], job: Job) -> None:
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=0.95,
                            stop=[POINTWISE_STOP], include_stop_str_in_output=True)
    scorer = PointwiseJudge(engine, params=params, template=args.template)
    prompts = {}
    good = []
    for item in todo:  # every item checked before any work starts
        responses = item.get("responses", [item["response"]] if "response" in item else None)
        if not responses or not all(isinstance(r, str) for r in responses):
            job.reject(item, item_error(args, item, "needs 'response' (string) or 'responses' "
                                                    "(list of strings)"))
            continue
        try:
            domain = item.get("domain", args.domain)
            prompts[item["id"]] = scorer.pointwise_prompts([(item["prompt"], r) for r in responses],
                                                           domain)
            good.append(item)
        except ValueError as exc:  # too long for the judge (PromptTooLong), an unknown domain
            detail = exc.detail if isinstance(exc, PromptTooLong) else str(exc)
            job.reject(item, item_error(args, item, detail))
    for start in range(0, len(good), args.batch):
        chunk = good[start: start + args.batch]
        chunk_prompts = [p for item in chunk for p in prompts[item["id"]]]
        results = iter(scorer.score_prompts(chunk_prompts, n=args.n, vote_method=args.vote,
                                            seed=args.seed))
        for item in chunk:
            mine = [next(results) for _ in prompts[item["id"]]]
            job.write({"id": item["id"], "scores": [r.score for r in mine],
                       "rollout_scores": [r.rollout_scores for r in mine],
                       "format_rewards": [r.format_rewards for r in mine]})
