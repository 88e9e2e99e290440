"""kojudge: a judging engine that runs LLM judges over many candidate answers fast, and trains
them."""
import os

# Idle OpenMP threads of libgomp (torch's CPU runtime) spin 300,000 rounds before they sleep: beside
# another busy process that spinning stalls every parallel op. Read when torch loads, so it takes
# effect where kojudge is imported first; a value the user set wins. Figures in the README.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

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
