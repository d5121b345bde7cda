"""Tokenizers (bytes for the tiny model, tokenizer.json through `tokenizers`), the streaming decoder, and the
`zaya-rt generate` command on the embedded tiny model."""

import pytest

from zaya_rt import cli
from zaya_rt.runtime import ByteTokenizer, HFTokenizer, load_tokenizer
from zaya_rt.runtime.tokenizer import StreamDecoder


def test_byte_tokenizer_round_trip_and_stream_decoder():
    tok = load_tokenizer(None)
    assert isinstance(tok, ByteTokenizer)
    text = "ZAYA1 \u00e9\u4e2d"
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids) and tok.decode(ids) == text
    stream = StreamDecoder(tok)
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) == text
    assert pieces[-1] == "\u4e2d" and pieces[-2] == ""  # a 3-byte character appears once complete


def test_hf_tokenizer_json(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"[UNK]": 0, "hello": 1, "zaya": 2, "world": 3}
    tok = tokenizers.Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    ours = load_tokenizer(tmp_path)
    assert isinstance(ours, HFTokenizer) and ours.vocab_size == 4
    assert ours.encode("hello zaya world") == [1, 2, 3]
    assert ours.decode([1, 2]).split() == ["hello", "zaya"]
    with pytest.raises(ValueError, match="no tokenizer.json"):
        HFTokenizer(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        HFTokenizer(tmp_path / "bad")


def test_generate_command_streams_text(capsys):
    assert cli.main(["generate", "--prompt", "Hi", "--max-new-tokens", "5", "--temperature", "0"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("Hi")
    assert "5 generated" in err and "tok/s" in err
    with pytest.raises(ValueError, match="SamplingParams.top_p"):
        cli.main(["generate", "--prompt", "Hi", "--top-p", "0"])
