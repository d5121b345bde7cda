"""zaya_rt.train packing and jsonl data: best-fit decreasing, windows with cu_seqlens, SFT loss masks."""

import json
import random

import pytest
import torch

from zaya_rt.train import pack_indices
from zaya_rt.train.data import IGNORE_INDEX, load_samples, load_tokenizer, pack_windows, read_jsonl


def best_fit_decreasing_naive(lengths, window):
    """Independent reference: scan every open window for the tightest fit."""
    windows, rooms = [], []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        fits = [w for w in range(len(windows)) if rooms[w] >= lengths[i]]
        if fits:
            w = min(fits, key=lambda w: (rooms[w], w))
            windows[w].append(i)
            rooms[w] -= lengths[i]
        else:
            windows.append([i])
            rooms.append(window - lengths[i])
    return windows


def test_pack_fill_3000_samples():
    rng = random.Random(0)
    lengths = [rng.randint(1, 600) for _ in range(3000)]
    windows = pack_indices(lengths, 2048)
    assert sorted(i for w in windows for i in w) == list(range(3000))
    assert all(sum(lengths[i] for i in w) <= 2048 for w in windows)
    fill = sum(lengths) / (len(windows) * 2048)
    assert fill >= 0.97, fill


@pytest.mark.parametrize("seed", range(5))
def test_pack_matches_naive_best_fit(seed):
    rng = random.Random(seed)
    window = rng.randint(8, 300)
    lengths = [rng.randint(1, window) for _ in range(rng.randint(0, 200))]
    assert pack_indices(lengths, window) == best_fit_decreasing_naive(lengths, window)


def test_pack_edge_cases_and_errors():
    assert pack_indices([], 16) == []
    assert pack_indices([16], 16) == [[0]]
    assert pack_indices((1, 1, 1), 2) == [[0, 1], [2]]
    with pytest.raises(ValueError, match=r"lengths\[1\] = 17"):
        pack_indices([3, 17], 16)
    with pytest.raises(ValueError, match=r"lengths\[0\]"):
        pack_indices([0], 16)
    with pytest.raises(ValueError, match="window"):
        pack_indices([1], 0)
    with pytest.raises(TypeError, match="window"):
        pack_indices([1], 2.0)


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_text_and_input_ids_windows(tmp_path):
    rng = random.Random(1)
    texts = ["".join(rng.choice("abcdefgh ") for _ in range(rng.randint(1, 90))) for _ in range(30)]
    ids = [[rng.randrange(256) for _ in range(rng.randint(1, 40))] for _ in range(10)]
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts] + [{"input_ids": x} for x in ids])
    tok = load_tokenizer("bytes")
    samples, dropped = load_samples(path, tok, window=64)
    assert dropped == 0
    # Long texts are cut into window-sized pieces, in order.
    first = texts[0].encode()
    pieces = [list(first[s:s + 64]) for s in range(0, len(first), 64)]
    assert [s.input_ids for s in samples[: len(pieces)]] == pieces
    expected_docs = sorted(
        [bytes(p) for t in texts for p in (t.encode()[s:s + 64] for s in range(0, len(t.encode()), 64))]
        + [bytes(x) for x in ids]
    )
    windows = pack_windows(samples, 64)
    docs = []
    for w in windows:
        cu = w.cu_seqlens.tolist()
        assert w.cu_seqlens.dtype == torch.int32 and cu[0] == 0 and cu[-1] == w.input_ids.numel() <= 64
        for a, b in zip(cu[:-1], cu[1:]):
            doc = w.input_ids[a:b]
            docs.append(bytes(doc.tolist()))
            # Labels: next token inside the document, nothing across the boundary.
            assert w.labels[a:b - 1].tolist() == doc[1:].tolist()
            assert w.labels[b - 1].item() == IGNORE_INDEX
    assert sorted(docs) == expected_docs


def test_sft_loss_only_on_assistant_tokens(tmp_path):
    chats = [
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"},
         {"role": "assistant", "content": "<think>two and two</think>4"}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
         {"role": "user", "content": "bye"}, {"role": "assistant", "content": "ciao"}],
    ]
    path = write_jsonl(tmp_path / "sft.jsonl", [{"messages": c, "id": n} for n, c in enumerate(chats)])
    samples, _ = load_samples(path, load_tokenizer("bytes"), window=256)
    (w,) = pack_windows(samples, 256)
    cu = w.cu_seqlens.tolist()
    learned = set()
    for lo, hi in zip(cu[:-1], cu[1:]):
        # Targets of one document, in order: exactly its assistant contents with their end markers.
        learned.add(bytes(t for t in w.labels[lo:hi].tolist() if t != IGNORE_INDEX).decode())
        rendered = bytes(w.input_ids[lo:hi].tolist()).decode()
        assert rendered.startswith("<|") and "<|assistant|>\n" in rendered
    assert learned == {"".join(m["content"] + "<|end|>\n" for m in c if m["role"] == "assistant") for c in chats}


def test_sft_trimmed_to_budget_and_dropped(tmp_path):
    long_reasoning = {"role": "assistant", "content": "<think>" + "r" * 500 + "</think>answer"}
    too_long = [{"role": "user", "content": "q" * 300}, {"role": "assistant", "content": "a"}]
    path = write_jsonl(tmp_path / "sft.jsonl", [
        {"messages": [{"role": "user", "content": "q"}, long_reasoning]}, {"messages": too_long},
    ])
    samples, dropped = load_samples(path, load_tokenizer("bytes"), window=256, sft_budget=200)
    assert dropped == 1 and len(samples) == 1
    text = bytes(samples[0].input_ids).decode()
    assert len(samples[0].input_ids) == 200 and text.endswith("</think>answer<|end|>\n")
    with pytest.raises(ValueError, match="sft_budget"):
        load_samples(path, load_tokenizer("bytes"), window=256, sft_budget=300)


def test_tokenizer_json_path(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(["the cat sat on the mat"] * 20, trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"]))
    tok.save(str(tmp_path / "tokenizer.json"))
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "the cat sat"}])
    samples, _ = load_samples(path, load_tokenizer(str(tmp_path / "tokenizer.json")), window=64)
    assert samples[0].input_ids == tok.encode("the cat sat").ids
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_tokenizer(str(tmp_path / "missing"))


@pytest.mark.parametrize("bad_line, message", [
    ("{not json", "line 3: not valid JSON"),
    ("[1, 2]", "line 3: expected a JSON object"),
    ('{"text": "a", "input_ids": [1]}', "line 3: expected exactly one of"),
    ('{"text": 5}', "line 3: 'text' must be a string"),
    ('{"input_ids": [1, 999]}', "line 3: token id 999"),
    ('{"messages": [{"role": "user", "content": "q"}]}', "line 3: 'messages' has no assistant"),
    ('{"messages": [{"role": "user"}]}', r"line 3: messages\[0\]"),
])
def test_malformed_line_names_line_number(tmp_path, bad_line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, "", bad_line])
    with pytest.raises(ValueError, match=message):
        load_samples(path, load_tokenizer("bytes"), window=32)


def test_read_jsonl_skips_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}, "  ", {"text": "b"}])
    assert [n for n, _ in read_jsonl(path)] == [1, 3]
