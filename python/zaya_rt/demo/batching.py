"""One engine call per RSA round across many problems: `markovian_rsa` runs one problem per thread, and each
thread's `generate` waits until every still-running problem has submitted its round; the last one to arrive
runs all prompts through zaya_rt's Engine at once (the batch is problems x population wide), then hands each
thread its completions. Rounds line up because every problem runs the same number of rounds."""

from __future__ import annotations

import threading
import time


class SharedRoundEngine:
    """An RSA engine (generate(prompts, params)) shared by `workers` problem threads; call `done()` when a
    thread's problem has finished. `generated_tokens` and `seconds` count the engine's work."""

    def __init__(self, engine, workers: int) -> None:
        if not callable(getattr(engine, "generate", None)):
            raise TypeError(f"engine must have generate(prompts, params), got {type(engine).__name__}")
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        self.engine, self.active = engine, workers
        self.cond = threading.Condition()
        self.pending: list[dict] = []
        self.generated_tokens, self.seconds = 0, 0.0

    def generate(self, prompts, params) -> list[list[int]]:
        entry = {"prompts": list(prompts), "params": list(params), "out": None, "error": None}
        with self.cond:
            self.pending.append(entry)
            self._run_if_complete()
            while entry["out"] is None and entry["error"] is None:
                self.cond.wait()
        if entry["error"] is not None:
            raise RuntimeError("the shared engine call failed") from entry["error"]
        return entry["out"]

    def done(self) -> None:
        """One problem thread has finished (normally or not): the others no longer wait for it."""
        with self.cond:
            self.active -= 1
            self._run_if_complete()

    def _run_if_complete(self) -> None:
        if not self.pending or len(self.pending) < self.active:
            return
        batch, self.pending = self.pending, []
        prompts = [p for e in batch for p in e["prompts"]]
        params = [p for e in batch for p in e["params"]]
        start = time.perf_counter()
        try:
            out = self.engine.generate(prompts, params)
        except Exception as exc:  # every waiting thread re-raises it
            for e in batch:
                e["error"] = exc
        else:
            self.seconds += time.perf_counter() - start
            self.generated_tokens += sum(map(len, out))
            offset = 0
            for e in batch:
                e["out"] = out[offset:offset + len(e["prompts"])]
                offset += len(e["prompts"])
        self.cond.notify_all()


def run_threads(fn, items, engine: SharedRoundEngine) -> list:
    """fn(item) for every item, one thread each, sharing `engine`; returns the results in order (re-raises
    the first failure)."""
    results, errors = [None] * len(items), [None] * len(items)

    def work(i, item):
        try:
            results[i] = fn(item)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            errors[i] = exc
        finally:
            engine.done()

    threads = [threading.Thread(target=work, args=(i, item), daemon=True) for i, item in enumerate(items)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for exc in errors:
        if exc is not None:
            raise exc
    return results
