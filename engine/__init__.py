"""kojudge: a judging engine that runs LLM judges over many candidate answers fast, and trains
them."""
from kojudge.judging.formats import round_robin, swiss
from kojudge.judging.pairjudge import BestOfN, PairJudge
from kojudge.judging.pointwise import PointwiseJudge, PointwiseScore
from kojudge.judging.tournament import ScoredVerdict, TournamentResult, Verdict, knockout
from kojudge.model.config import ModelConfig, load_config
from kojudge.model.decoder import Model
from kojudge.runtime.config import EngineConfig
from kojudge.runtime.engine import Engine
from kojudge.runtime.intake import PromptTooLong
from kojudge.runtime.sampling import SamplingParams
from kojudge.runtime.sequence import RequestOutput

__all__ = ["BestOfN", "Engine", "EngineConfig", "Model", "ModelConfig", "PairJudge",
           "PointwiseJudge", "PointwiseScore", "PromptTooLong", "RequestOutput", "SamplingParams",
           "ScoredVerdict", "TournamentResult", "Verdict", "knockout", "load_config", "round_robin",
           "swiss"]
