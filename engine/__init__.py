"""kojudge: a judging engine that runs LLM judges over many candidate answers fast, and trains them."""
from kojudge.config import ModelConfig, load_config
from kojudge.engine import Engine, PromptTooLong
from kojudge.model import Model
from kojudge.pairjudge import BestOfN, PairJudge
from kojudge.pointwise import PointwiseJudge, PointwiseScore
from kojudge.sampling import SamplingParams
from kojudge.sequence import RequestOutput
from kojudge.tournament import TournamentResult, Verdict, knockout, round_robin, swiss

__all__ = ["BestOfN", "Engine", "Model", "ModelConfig", "PairJudge", "PointwiseJudge", "PointwiseScore", "PromptTooLong", "RequestOutput", "SamplingParams", "TournamentResult", "Verdict",
           "knockout", "load_config", "round_robin", "swiss"]
