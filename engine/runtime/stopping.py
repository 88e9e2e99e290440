"""When a request stops, and the text it returns: EOS and stop tokens, stop strings (watched on
incrementally decoded text), the max_tokens and max-model-length limits."""
from __future__ import annotations

from typing import TYPE_CHECKING

from kojudge.model.tokenizer import Tokenizer

if TYPE_CHECKING:
    from kojudge.runtime.sequence import Sequence


class Detokenizer:
    """Turns a growing list of token ids into text deltas without decoding it all each step.

    A token may end inside a multi-byte character; its text is held back until the character is
    complete.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.prefix_offset = 0
        self.read_offset = 0

    def step(self, token_ids: list[int]) -> str:
        decode = self.tokenizer.decode
        prefix_text = decode(token_ids[self.prefix_offset: self.read_offset])
        full_text = decode(token_ids[self.prefix_offset:])
        if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(token_ids)
            return full_text[len(prefix_text):]
        return ""


def finish_reason(seq: Sequence, token: int, eos_token_ids: tuple[int, ...],
                  max_model_len: int) -> str | None:
    """"stop" or "length" once `token` (just appended to `seq`) ends the request, else None."""
    params = seq.params
    if (not params.ignore_eos and token in eos_token_ids) or token in params.stop_token_ids:
        return "stop"
    if params.stop and _matches_stop_string(seq):
        return "stop"
    if len(seq.output_ids) >= params.max_tokens or seq.num_tokens >= max_model_len:
        return "length"
    return None


def _matches_stop_string(seq: Sequence) -> bool:
    delta = seq.detokenizer.step(seq.output_ids)
    if not delta:
        return False
    stops = seq.params.stop
    # Only the tail can hold a new match: the delta plus the longest stop string's overlap.
    window_start = max(0, len(seq.text) - max(map(len, stops)) + 1)
    seq.text += delta
    hits = [(i, s) for s in stops if (i := seq.text.find(s, window_start)) >= 0]
    if not hits:
        return False
    index, stop = min(hits)
    seq.stop_index = index + (len(stop) if seq.params.include_stop_str_in_output else 0)
    return True


def output_text(seq: Sequence, tokenizer: Tokenizer) -> str:
    """The finished request's text, cut where a stop string matched."""
    if seq.stop_index is not None:
        return seq.text[: seq.stop_index]
    return tokenizer.decode(seq.output_ids)
