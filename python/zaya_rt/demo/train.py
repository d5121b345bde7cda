"""`zaya-rt demo --train`: builds the demo model from scratch with zaya_rt's own trainer.

1. the task's texts (corpus.py) and a BPE tokenizer trained on them (tokenizer.json);
2. stage `pretrain`: `zaya-rt train` on plain task traces, from random weights;
3. stages `sft`, `sft2`, ...: `zaya-rt train` from the previous model on fresh chats, half rollouts and half RSA
   aggregations with partly corrupted candidates, loss on the answers only;
4. the SFT model in bfloat16 with tokenizer.json and demo.json (the recipe) in OUT/model.
Each stage writes its TOML config under OUT, so it can be rerun with `zaya-rt train --config`; rerunning the
demo's training resumes the stages from their checkpoints.
"""

from __future__ import annotations

import os
import shutil
import time

import torch

from zaya_rt.demo.corpus import pretrain_texts, sft_chats, write_jsonl
from zaya_rt.demo.recipe import Recipe, Stage
from zaya_rt.demo.tokenizer import SPECIAL_TOKENS, DemoTokenizer, train_tokenizer
from zaya_rt.train.data import render_chat

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "demo.json")


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def _write_config(path: str, sections: dict[str, dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for name, values in sections.items():
            f.write(f"[{name}]\n")
            for key, value in values.items():
                if value is None:  # TOML has no null: the field keeps its default
                    continue
                f.write(f"{key} = {_toml_value(value)}\n")
            f.write("\n")
    return path


def _stage_config(out: str, name: str, stage: Stage, data: str, tokenizer: str, model: dict, seed: int) -> str:
    train = dict(steps=stage.steps, out_dir=os.path.join(out, name), batch_windows=stage.batch_windows,
                 lr=stage.lr, warmup_steps=stage.warmup_steps, decay_steps=stage.decay_steps, seed=seed,
                 checkpoint_every=max(1, stage.steps // 4), keep_checkpoints=1, weight_decay=0.0)
    return _write_config(os.path.join(out, f"{name}.toml"), {
        "model": model, "data": dict(path=data, tokenizer=tokenizer, window=stage.window), "train": train})


def _docs_for(stage: Stage, tokens_per_doc: float) -> int:
    """Documents enough for one pass over the stage's tokens with 10% to spare."""
    return max(8, int(stage.steps * stage.batch_windows * stage.window / tokens_per_doc * 1.1))


def _train_stage(config_path: str, progress: bool) -> str:
    from zaya_rt.train.config import load_config
    from zaya_rt.train.trainer import Trainer

    trainer = Trainer(load_config(config_path), progress=progress)
    trainer.resume()
    return trainer.run()


def train_demo(out: str, recipe: Recipe, *, progress: bool = True, log=print) -> str:
    """Runs the recipe into folder `out`; returns OUT/model (config.json, model.safetensors in bfloat16,
    tokenizer.json, demo.json)."""
    start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    common = dict(steps=recipe.train_steps, modulus=recipe.modulus)
    # Rough token counts per document decide how many to generate (exact counts need the tokenizer first).
    texts = pretrain_texts(recipe.seed, _docs_for(recipe.pretrain, 45), **common)
    chat_parts = [sft_chats(recipe.seed, _docs_for(stage, 120 + 320 * recipe.aggregate_share), tails=recipe.tails,
                            aggregate_share=recipe.aggregate_share, part=i, **common)
                  for i, stage in enumerate(recipe.sft)]
    tok_path = os.path.join(out, "tokenizer.json")
    if not os.path.exists(tok_path):
        corpus = texts + [m["content"] for chat in chat_parts[0][:2000] for m in chat]
        corpus += [f"<|{role}|>\n" for role in ("user", "assistant")] + [SPECIAL_TOKENS[0]]
        train_tokenizer(corpus, recipe.vocab_size, tok_path)
    tokenizer = DemoTokenizer(tok_path)
    for chats in chat_parts:
        longest = max(len(render_chat(c, tokenizer).input_ids) for c in chats)
        if longest > max(stage.window for stage in recipe.sft):
            raise ValueError(f"recipe: an SFT chat has {longest} tokens, more than the SFT window")
    model = dict(recipe.model, vocab_size=tokenizer.vocab_size, eos_token_id=tokenizer.eos_token_id)
    log(f"demo training in {out}: {len(texts)} pretraining traces, {sum(map(len, chat_parts))} SFT chats, "
        f"vocabulary {tokenizer.vocab_size}")
    pre_data = write_jsonl(os.path.join(out, "pretrain.jsonl"), [{"text": t} for t in texts])
    final = _train_stage(_stage_config(out, "pretrain", recipe.pretrain, pre_data, tok_path, model, recipe.seed),
                         progress)
    log(f"pretraining done ({time.perf_counter() - start:.0f}s): {final}")
    for i, (stage, chats) in enumerate(zip(recipe.sft, chat_parts)):
        name = "sft" if i == 0 else f"sft{i + 1}"
        data = write_jsonl(os.path.join(out, f"{name}.jsonl"), [{"messages": c} for c in chats])
        final = _train_stage(_stage_config(out, name, stage, data, tok_path, {"init_from": final}, recipe.seed),
                             progress)
        log(f"{name} done ({time.perf_counter() - start:.0f}s): {final}")
    return export_model(final, tok_path, recipe, os.path.join(out, "model"))


def export_model(final_dir: str, tokenizer_path: str, recipe: Recipe, dest: str) -> str:
    """Writes the trained model in bfloat16 (balancing biases fp32) with its tokenizer and recipe to `dest`."""
    from zaya_rt.model.checkpoint import load, save

    model = load(final_dir, dtype=torch.bfloat16)
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save(model, tmp)
    shutil.copyfile(tokenizer_path, os.path.join(tmp, "tokenizer.json"))
    with open(os.path.join(tmp, "demo.json"), "w", encoding="utf-8") as f:
        f.write(recipe.to_json())
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(tmp, dest)
    return dest
