"""Markovian RSA (SPEC section 6): test-time compute by recursive aggregation of bounded tails."""

from zaya_rt.rsa.answers import ExactMatch, MathVerify, extract_boxed
from zaya_rt.rsa.config import RSAConfig
from zaya_rt.rsa.engines import HFEngine, OpenAIEngine
from zaya_rt.rsa.loop import RoundStats, RSACandidate, RSAResult, make_tail, markovian_rsa
from zaya_rt.rsa.templates import DefaultTemplate, RSATemplate

__all__ = ["DefaultTemplate", "ExactMatch", "HFEngine", "MathVerify", "OpenAIEngine", "RSACandidate", "RSAConfig",
           "RSAResult", "RSATemplate", "RoundStats", "extract_boxed", "make_tail", "markovian_rsa"]
