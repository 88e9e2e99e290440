"""kojudge on one workload in a fresh process, as `kojudge judge` sees it:

    python bench/cold_start.py REQUEST.json REPLY.json

Times the first `Engine()` and its first run (the cold figures), a second `Engine()`, and the best
of `repeats` warm runs, each on a fresh engine so the prefix cache starts empty; then profiles
one more warm run by step kind (bench/step_profile.py). Written to REPLY.json with the outputs.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

started = time.perf_counter()
import kojudge  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from step_profile import StepProfile  # noqa: E402


def timed_round(engine: kojudge.Engine, prompts: list[list[int]],
                params: kojudge.SamplingParams) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    outputs = engine.generate(prompts, params)
    return time.perf_counter() - start, [o.token_ids for o in outputs]


def main() -> None:
    request = json.loads(Path(sys.argv[1]).read_text())
    import_seconds = time.perf_counter() - started
    prompts = request["prompts"]
    params = kojudge.SamplingParams(max_tokens=request["new_tokens"], ignore_eos=True)

    def load() -> tuple[float, kojudge.Engine]:
        start = time.perf_counter()
        engine = kojudge.Engine(request["model_dir"], dtype=request["dtype"])
        return time.perf_counter() - start, engine

    engine_seconds, engine = load()
    tokenizer_from_cache = engine.tokenizer.from_cache
    first_seconds, outputs = timed_round(engine, prompts, params)
    stats = engine.stats()
    del engine
    later_engine_seconds, engine = load()
    warm = [timed_round(engine, prompts, params)[0]]
    for _ in range(request["repeats"] - 1):
        warm.append(timed_round(load()[1], prompts, params)[0])
    engine = load()[1]
    profile = StepProfile(engine)
    timed_round(engine, prompts, params)
    reply = dict(import_seconds=import_seconds, engine_seconds=engine_seconds,
                 tokenizer_from_cache=tokenizer_from_cache,
                 later_engine_seconds=later_engine_seconds, first_run_seconds=first_seconds,
                 warm_run_seconds=min(warm), warm_runs=warm, stats=stats,
                 profile=profile.breakdown(), outputs=outputs)
    Path(sys.argv[2]).write_text(json.dumps(reply))


if __name__ == "__main__":
    main()
