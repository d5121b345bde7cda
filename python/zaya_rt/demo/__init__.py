"""The README's first command: a tiny ZAYA1-shaped reasoning model trained by zaya_rt's trainer (shipped in
model/), evaluated with Markovian RSA on held-out modular-arithmetic chains (`zaya-rt demo`, `--train`, `--rl`)."""

from zaya_rt.demo.evaluate import evaluate, load_demo_model, packaged_model_dir
from zaya_rt.demo.recipe import RECIPE, Recipe, Stage
from zaya_rt.demo.task import Problem, check, make_problem, make_problems, solution

__all__ = ["RECIPE", "Problem", "Recipe", "Stage", "check", "evaluate", "load_demo_model", "make_problem",
           "make_problems", "packaged_model_dir", "solution"]
