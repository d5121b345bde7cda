"""OpenAIEngine against a stub OpenAI-compatible completions server on 127.0.0.1 (stdlib http.server): request
bodies carry the token-id prompt and the sampling settings, one request per prompt sent concurrently, replies
give token ids (vLLM's `token_ids`, or logprobs tokens `token_id:N`), errors are clear, and the loop runs."""

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import zaya_rt
from rsa_helpers import ScriptTokenizer
from zaya_rt.rsa import OpenAIEngine, RSAConfig, markovian_rsa


class _Stub(BaseHTTPRequestHandler):
    """Answers POST /v1/completions with seeded ids derived from the prompt; `mode` picks the reply shape."""

    def do_POST(self):  # noqa: N802 - http.server's naming
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests.append((self.path, dict(self.headers), body))
            server.active += 1
            server.most_active = max(server.most_active, server.active)
        server.barrier_wait()
        try:
            if server.mode == "error":
                self._reply(400, {"error": {"message": "bad model name"}})
                return
            rng = random.Random(f"{body['prompt']}:{body.get('seed')}")
            ids = [rng.randrange(1000) for _ in range(body["max_tokens"])]
            reason = "length"
            if ids[0] % 2 == 0 and body.get("stop_token_ids"):
                ids, reason = ids[:2] + [body["stop_token_ids"][0]], "stop"
            choice = {"index": 0, "text": "ignored", "finish_reason": reason}
            if server.mode == "token_ids":
                choice["token_ids"] = ids
            elif server.mode == "logprobs":
                choice["logprobs"] = {"tokens": [f"token_id:{i}" for i in ids]}
            self._reply(200, {"id": "cmpl-1", "object": "text_completion", "choices": [choice]})
        finally:
            with server.lock:
                server.active -= 1

    def _reply(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    srv.lock, srv.requests, srv.active, srv.most_active, srv.mode = threading.Lock(), [], 0, 0, "token_ids"
    srv.barrier = None
    srv.barrier_wait = lambda: srv.barrier.wait(10) if srv.barrier is not None else None
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv, suffix=""):
    return f"http://127.0.0.1:{srv.server_address[1]}{suffix}"


def test_requests_carry_prompt_ids_and_settings_concurrently(server):
    server.barrier = threading.Barrier(3)  # the stub answers only once all 3 requests are in flight
    engine = OpenAIEngine(_url(server, "/v1/"), "zaya1-8b", api_key="sk-test")
    prompts = [[1, 2, 3], [4, 5], [6]]
    params = [zaya_rt.SamplingParams(max_new_tokens=4, temperature=0.7, top_p=0.9, top_k=20, min_p=0.05,
                                     stop_token_ids=(999,), seed=s) for s in (11, 12, 13)]
    out = engine.generate(prompts, params)
    assert server.most_active == 3
    bodies = sorted((b for _, _, b in server.requests), key=lambda b: b["seed"])
    for body, prompt, p in zip(bodies, prompts, params):
        assert body == {"model": "zaya1-8b", "prompt": prompt, "max_tokens": 4, "temperature": 0.7, "top_p": 0.9,
                        "top_k": 20, "min_p": 0.05, "stop_token_ids": [999], "seed": p.seed,
                        "return_token_ids": True}
    for path, headers, _ in server.requests:
        assert path == "/v1/completions" and headers["Authorization"] == "Bearer sk-test"
    for prompt, p, ids, reason in zip(prompts, params, out, engine.last_finish_reasons):
        rng = random.Random(f"{prompt}:{p.seed}")
        want = [rng.randrange(1000) for _ in range(4)]
        assert (ids, reason) == ((want[:2] + [999], "stop") if want[0] % 2 == 0 else (want, "length"))


def test_logprob_token_ids_and_defaults_left_out(server):
    server.mode = "logprobs"
    engine = OpenAIEngine(_url(server), "m")
    out = engine.generate([[7, 8]], zaya_rt.SamplingParams(max_new_tokens=3, temperature=1.0))
    rng = random.Random("[7, 8]:None")
    assert out == [[rng.randrange(1000) for _ in range(3)]]
    _, headers, body = server.requests[0]
    assert "Authorization" not in headers and not {"top_k", "min_p", "stop_token_ids", "seed"} & set(body)


def test_errors_are_clear(server):
    engine = OpenAIEngine(_url(server), "m")
    server.mode = "text_only"
    with pytest.raises(RuntimeError, match="no generated token ids"):
        engine.generate([[1]], zaya_rt.SamplingParams())
    server.mode = "error"
    with pytest.raises(RuntimeError, match="HTTP 400: .*bad model name"):
        engine.generate([[1]], zaya_rt.SamplingParams())
    with pytest.raises(RuntimeError, match="cannot reach"):
        OpenAIEngine("http://127.0.0.1:1", "m", timeout=5).generate([[1]], zaya_rt.SamplingParams())
    with pytest.raises(ValueError, match="base_url"):
        OpenAIEngine("127.0.0.1:8000", "m")
    with pytest.raises(ValueError, match="non-empty list"):
        engine.generate([[]], zaya_rt.SamplingParams())


def test_markovian_rsa_over_http(server):
    config = RSAConfig(population=4, tails=2, rounds=2, budget=6, tail_tokens=3, seed=9)
    engine = OpenAIEngine(_url(server), "m")
    result = markovian_rsa(engine, ScriptTokenizer(), "2+2?", config, progress=False)
    assert len(server.requests) == 12 and [len(r) for r in result.prompts] == [4, 4, 4]
    sent = sorted(json.dumps(b["prompt"]) for _, _, b in server.requests)
    assert sent == sorted(json.dumps(p) for r in result.prompts for p in r)
    for cand in result.rounds[2]:
        assert cand.finish_reason in ("stop", "length") and 3 not in cand.tail_ids
