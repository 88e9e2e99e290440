"""Many items' judge requests through one Engine: every request of every item sits in the engine
together, and each finished one is handed back at once, so that a protocol can submit follow-ups
(a tournament's next round) without waiting for the other items."""
from __future__ import annotations

from typing import Callable, Hashable

from kojudge.runtime.engine import Engine
from kojudge.runtime.intake import PromptTooLong
from kojudge.runtime.sampling import SamplingParams
from kojudge.runtime.sequence import RequestOutput


def check_fits(engine: Engine, index: int, tokens: int, what: str) -> None:
    """Refuse item `index` before any work when its judge prompt (`what` has `tokens` tokens)
    leaves the judge no room to generate."""
    limit = engine.max_model_len
    if tokens >= limit:
        detail = f"{what} {tokens} tokens, and the judge's max model length is {limit}"
        raise PromptTooLong(f"item {index}", detail, index, tokens, limit)


class JudgeRequests:
    """Requests tagged with what they are for (an item, a match, a rollout)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.pending: dict[int, Hashable] = {}  # request id -> tag

    def submit(self, prompt_ids: list[int], params: SamplingParams, tag: Hashable) -> None:
        self.pending[self.engine.submit(prompt_ids, params)] = tag

    def submit_score(self, prompt_ids: list[int], continuation: str, tag: Hashable) -> None:
        self.pending[self.engine.submit_score(prompt_ids, continuation)] = tag

    def run(self, on_finished: Callable[[Hashable, RequestOutput], None]) -> None:
        """Step the engine until every request, follow-ups included, has finished."""
        while self.pending:
            for out in self.engine.step():
                tag = self.pending.pop(out.request_id, None)
                if tag is not None:
                    on_finished(tag, out)

    def generate(self, prompts: list[list[int]], params: list[SamplingParams]
                 ) -> list[RequestOutput]:
        """Every prompt's output, in order; all of them are checked before any is submitted."""
        return self.engine.generate(prompts, params)
