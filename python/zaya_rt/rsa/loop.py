"""The Markovian RSA loop (SPEC section 6): N rollouts, then T rounds in which every new candidate aggregates
the tails of C distinct candidates drawn from the previous round, so the aggregation context stays bounded by
|problem| + C * tau + template overhead whatever the budget beta is."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from zaya_rt.rsa.answers import ExactMatch, as_checker, extract_boxed
from zaya_rt.rsa.config import RSAConfig
from zaya_rt.rsa.engines import run_round
from zaya_rt.rsa.templates import DefaultTemplate, check_tokenizer
from zaya_rt.runtime.params import SamplingParams


@dataclass
class RSACandidate:
    """One trace: token_ids generated (stop token included), tail_ids kept for the next round, text (decoded
    without the stop token), answer (answer_fn of text), finish_reason, parents (indices into the previous
    round's candidates whose tails it aggregated, in prompt order; empty in round 0)."""

    token_ids: list[int]
    tail_ids: list[int]
    text: str
    answer: str | None
    finish_reason: str
    parents: list[int] = field(default_factory=list)


@dataclass
class RoundStats:
    """One round: prompt tokens issued, prefix-cache hit tokens and peak KV pages held (zaya_rt's Engine;
    None elsewhere), tokens generated, wall seconds."""

    prompt_tokens: int
    prefix_hit_tokens: int | None
    generated_tokens: int
    peak_kv_pages: int | None
    seconds: float


@dataclass
class RSAResult:
    """rounds[t]: round t's N candidates (t = 0 .. T); prompts[t]: the N prompt id lists issued in round t;
    stats[t]: round t's counters. Accuracy helpers take the round (default: the last) and a check (a gold
    answer, a callable answer -> bool, or a checker such as MathVerify)."""

    problem: str
    config: RSAConfig
    rounds: list[list[RSACandidate]] = field(default_factory=list)
    prompts: list[list[list[int]]] = field(default_factory=list)
    stats: list[RoundStats] = field(default_factory=list)

    @property
    def final(self) -> list[RSACandidate]:
        """The last round's candidates."""
        return self.rounds[-1]

    def answers(self, t: int = -1) -> list[str | None]:
        """Round t's extracted answers (None where a candidate has none)."""
        return [c.answer for c in self.rounds[t]]

    def mean_accuracy(self, t: int = -1, check=None) -> float:
        """Fraction of round t's candidates whose answer is right (the paper's score)."""
        check = as_checker(check)
        answers = self.answers(t)
        return sum(bool(check(a)) for a in answers) / len(answers)

    def majority_answer(self, t: int = -1, check=None) -> str | None:
        """The answer of the largest cluster of round t's answers (clustered by check.equivalent; exact match
        when check is None); ties go to the cluster seen first; None when no candidate has an answer."""
        equivalent = as_checker(check).equivalent if check is not None else ExactMatch.equivalent
        clusters: list[list[str]] = []
        for a in self.answers(t):
            if a is None:
                continue
            for cluster in clusters:
                if equivalent(cluster[0], a):
                    cluster.append(a)
                    break
            else:
                clusters.append([a])
        return max(clusters, key=len)[0] if clusters else None

    def majority_vote(self, t: int = -1, check=None) -> bool:
        """Whether round t's majority answer is right."""
        check = as_checker(check)
        return bool(check(self.majority_answer(t, check)))

    def pass_at_n(self, t: int = -1, check=None) -> bool:
        """Whether any candidate of round t is right."""
        check = as_checker(check)
        return any(bool(check(a)) for a in self.answers(t))

    def to_dict(self) -> dict:
        """JSON-ready: problem, config, rounds (candidates), stats (prompts are left out: the template
        rebuilds them from the parents)."""
        return {"problem": self.problem, "config": self.config.to_dict(),
                "rounds": [[asdict(c) for c in r] for r in self.rounds], "stats": [asdict(s) for s in self.stats]}

    @classmethod
    def from_dict(cls, data: dict) -> RSAResult:
        """The result to_dict() saved (prompts empty: markovian_rsa(resume=...) rebuilds them)."""
        return cls(data["problem"], RSAConfig(**data["config"]),
                   [[RSACandidate(**c) for c in r] for r in data["rounds"]],
                   [], [RoundStats(**s) for s in data["stats"]])


def make_tail(generated: Sequence[int], tail_tokens: int, head_tokens: int = 0) -> list[int]:
    """The first head_tokens ids then the last tail_tokens ids of a trace (the whole trace if it is no longer
    than both together)."""
    generated = list(generated)
    if len(generated) <= head_tokens + tail_tokens:
        return generated
    return generated[:head_tokens] + generated[len(generated) - tail_tokens:]


def _stop_ids(tokenizer, stop_token_ids) -> tuple[int, ...]:
    if stop_token_ids is None:
        eos = getattr(tokenizer, "eos_token_id", None)
        stop_token_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    return tuple(int(t) for t in stop_token_ids)


def _check_prompt(ids, where: str) -> list[int]:
    if not isinstance(ids, list) or not ids or any(not isinstance(t, int) or isinstance(t, bool) for t in ids):
        raise ValueError(f"the template's {where} must return a non-empty list of int token ids")
    return ids


def _round_prompts(template, problem, rounds, t, config, rng, rollout):
    """Round t's prompts and parents; draws the parents from rng (independent draws per candidate)."""
    if t == 0:
        return [list(rollout) for _ in range(config.population)], [[] for _ in range(config.population)]
    previous = rounds[t - 1]
    parents = [rng.sample(range(len(previous)), config.tails) for _ in range(config.population)]
    prompts = [_check_prompt(template.aggregate(problem, [previous[j].tail_ids for j in ps]), "aggregate()")
               for ps in parents]
    return prompts, parents


def markovian_rsa(engine, tokenizer, problem: str, config: RSAConfig, *,
                  answer_fn: Callable[[str], str | None] = extract_boxed, template=None, progress: bool = True,
                  stop_token_ids: Sequence[int] | None = None, resume: RSAResult | None = None,
                  on_round: Callable[[RSAResult], None] | None = None) -> RSAResult:
    """Runs rounds 0..config.rounds of Markovian RSA on one problem.

    engine: generate(prompts, params) -> generated ids per prompt (module engines); tokenizer: encode/decode
    (its chat template is used when it has one); answer_fn: text -> answer; template: an RSATemplate (default:
    the RSA reference structure); stop_token_ids: default the tokenizer's eos_token_id. Every round's draws
    and sampling seeds come from random.Random keyed by (config.seed, round), so a run resumed from a partial
    result (`resume`, e.g. RSAResult.from_dict of a saved report) continues exactly as an unbroken run.
    on_round(result) is called after each round.
    """
    if not isinstance(config, RSAConfig):
        raise TypeError(f"config must be an RSAConfig, got {type(config).__name__}")
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError("problem must be a non-empty string")
    check_tokenizer(tokenizer)
    if not callable(getattr(engine, "generate", None)):
        raise TypeError(f"engine must have generate(prompts, params), got {type(engine).__name__}")
    if not callable(answer_fn):
        raise TypeError("answer_fn must be a callable text -> answer")
    template = DefaultTemplate(tokenizer) if template is None else template
    if not callable(getattr(template, "rollout", None)) or not callable(getattr(template, "aggregate", None)):
        raise TypeError("template must have rollout(problem) and aggregate(problem, tails) (see RSATemplate)")
    stop = _stop_ids(tokenizer, stop_token_ids)
    result = RSAResult(problem, config)
    if resume is not None:
        if resume.problem != problem or resume.config != config:
            raise ValueError("resume: the saved result belongs to another problem or config")
        if len(resume.rounds) > config.rounds + 1 or any(len(r) != config.population for r in resume.rounds):
            raise ValueError(f"resume: the saved result must hold at most {config.rounds + 1} rounds of "
                             f"{config.population} candidates")
        result.rounds, result.stats = list(resume.rounds), list(resume.stats)
    rollout = _check_prompt(template.rollout(problem), "rollout()")
    for t in range(len(result.prompts), len(result.rounds)):  # prompts of restored rounds: rebuilt exactly
        prompts, _ = _round_prompts(template, problem, result.rounds, t, config, _rng(config, t), rollout)
        result.prompts.append(prompts)
    for t in range(len(result.rounds), config.rounds + 1):
        start = time.perf_counter()
        rng = _rng(config, t)
        prompts, parents = _round_prompts(template, problem, result.rounds, t, config, rng, rollout)
        params = [SamplingParams(max_new_tokens=config.budget, temperature=config.temperature, top_p=config.top_p,
                                 top_k=config.top_k, min_p=config.min_p, stop_token_ids=stop,
                                 seed=rng.getrandbits(63)) for _ in prompts]
        if progress:
            from tqdm.auto import tqdm

            with tqdm(total=config.population * config.budget, desc=f"RSA round {t}/{config.rounds}",
                      unit="tok", leave=False) as bar:
                out = run_round(engine, prompts, params, bar)
        else:
            out = run_round(engine, prompts, params)
        candidates = []
        for ids, reason, ps in zip(out.completions, out.finish_reasons, parents):
            generated = ids[:-1] if ids and ids[-1] in stop else ids
            text = tokenizer.decode(generated)
            candidates.append(RSACandidate(ids, make_tail(generated, config.tail_tokens, config.head_tokens),
                                           text, answer_fn(text), reason, ps))
        result.rounds.append(candidates)
        result.prompts.append(prompts)
        result.stats.append(RoundStats(sum(map(len, prompts)), out.prefix_hit_tokens,
                                       sum(map(len, out.completions)), out.peak_kv_pages,
                                       time.perf_counter() - start))
        if on_round is not None:
            on_round(result)
    return result


def _rng(config: RSAConfig, t: int) -> random.Random:
    return random.Random(f"zaya_rt.rsa:{config.seed}:{t}")
