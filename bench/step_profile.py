"""Where an engine's time goes, per step kind: linear layers (the MLP block whole), attention, LM
head, the model's other torch ops (norms, rotary, residuals) and the host side (batch building,
scheduling, sampling, Python).

The CPU runs each op synchronously, so wall-clock timers around the linear modules, the attention
call and the LM head are exact; what is left of the forward pass is the other torch ops, and
what is left of the step is the host side. A timer costs ~0.1 us against ops of 10 us and more.
"""
from __future__ import annotations

import time
from collections import defaultdict

import kojudge
from kojudge.model.decoder import Linear, SwiGLU

CATEGORIES = ("linear", "attention", "lm_head", "other_torch", "host")


def step_kind(work) -> str:
    single_tokens = {n == 1 for _, n in work}
    if single_tokens == {True}:
        return "decode"
    return "prefill" if single_tokens == {False} else "mixed"


class StepProfile:
    """Wraps one engine's step, runner, attention, linear modules and LM head with timers."""

    def __init__(self, engine: kojudge.Engine):
        self.seconds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.steps: dict[str, int] = defaultdict(int)
        self.tokens: dict[str, int] = defaultdict(int)
        self.lm_head_rows: dict[str, int] = defaultdict(int)
        self._kind = "idle"
        self._linear_started = 0.0
        self._linear_depth = 0
        self._wrap(engine)

    def _add(self, category: str, seconds: float) -> None:
        self.seconds[self._kind][category] += seconds

    def _wrap(self, engine: kojudge.Engine) -> None:
        step, run, logits = engine.step, engine.runner.run, engine.model.logits
        make_attention = engine.runner.attention

        def timed_step():
            start = time.perf_counter()
            out = step()
            self._add("step", time.perf_counter() - start)
            return out

        def timed_run(work, wanted):
            self._kind = step_kind(work)
            self.steps[self._kind] += 1
            self.tokens[self._kind] += sum(n for _, n in work)
            start = time.perf_counter()
            out = run(work, wanted)
            self._add("forward", time.perf_counter() - start)
            return out

        def timed_attention(cache, batch):
            attend = make_attention(cache, batch)

            def call(*args):
                start = time.perf_counter()
                out = attend(*args)
                self._add("attention", time.perf_counter() - start)
                return out
            return call

        def timed_logits(hidden):
            start = time.perf_counter()
            out = logits(hidden)
            self._add("lm_head", time.perf_counter() - start)
            self.lm_head_rows[self._kind] += hidden.shape[0]
            return out

        engine.step, engine.runner.run, engine.model.logits = timed_step, timed_run, timed_logits
        engine.runner.attention = timed_attention
        # The MLP block counts as linear as a whole: packed, its GEMMs run SiLU and the product
        # in their epilogues (its down projection, a Linear inside it, is not counted twice).
        for module in engine.model.modules():
            if isinstance(module, (Linear, SwiGLU)):
                module.register_forward_pre_hook(self._linear_pre)
                module.register_forward_hook(self._linear_post)

    def _linear_pre(self, module, args) -> None:
        if self._linear_depth == 0:
            self._linear_started = time.perf_counter()
        self._linear_depth += 1

    def _linear_post(self, module, args, output) -> None:
        self._linear_depth -= 1
        if self._linear_depth == 0:
            self._add("linear", time.perf_counter() - self._linear_started)

    def breakdown(self) -> dict[str, dict[str, float]]:
        """Per step kind: seconds per category (CATEGORIES), their total, steps, tokens and LM
        head rows."""
        result = {}
        for kind, s in self.seconds.items():
            if kind == "idle":
                continue
            parts = {"linear": s["linear"], "attention": s["attention"], "lm_head": s["lm_head"],
                     "other_torch": s["forward"] - s["linear"] - s["attention"]}
            parts["host"] = s["step"] - sum(parts.values())
            result[kind] = {**parts, "total": s["step"], "steps": self.steps[kind],
                            "tokens": self.tokens[kind], "lm_head_rows": self.lm_head_rows[kind]}
        return result


def print_breakdown(breakdown: dict[str, dict[str, float]]) -> None:
    for kind, parts in breakdown.items():
        shares = ", ".join(f"{c} {100 * parts[c] / parts['total']:.0f}%" for c in CATEGORIES)
        print(f"  {kind}: {parts['total']:.2f} s over {parts['steps']} steps, "
              f"{parts['tokens']} tokens: {shares}")
