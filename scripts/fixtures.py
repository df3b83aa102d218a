#!/usr/bin/env python3
"""Seeded random-weight Gemma 2 test models and reference fixtures for shieldgate.

The weights come from a deterministic integer formula that src/model/load/synthetic.rs
implements too, so neither side commits weights:

    seed  = FNV-1a 64 of the tensor's Hugging Face name (UTF-8)
    z     = splitmix64(seed + index * 0x9E3779B97F4A7C15)     (wrapping u64)
    value = (2 * (z >> (64 - bits)) - 2**bits) / 2**(bits + shift)   (exact in f32)

`shift` is 0 for the embedding, 2 for norm weights, and ceil(log2(fan_in) / 2)
(computed as (bit_length(fan_in - 1) + 1) // 2) for the linear layers. `bits` is 24,
except 12 for norm weights, so that llama.cpp's stored (1 + w) is exact in f32 too.

Commands:
  model      write a Hugging Face folder (config.json, safetensors, tokenizer.json)
             and GGUF files of a preset; needs numpy, safetensors, gguf.
  reference  run Hugging Face transformers (f32, eager attention) on every
             preset and record token ids and last-position Yes/No logits into
             tests/fixtures/parity.json; needs torch and transformers too.
  prompt-guard
             run transformers' DebertaV2ForSequenceClassification with the same
             formula's weights in both Prompt Guard 2 shapes (22M, 86M) on fixed
             token windows and record their logits into
             tests/fixtures/prompt_guard.json; needs torch and transformers.
             The Prompt Guard weights take the formula's rule for every tensor:
             shift 2 and 12 bits for 1-D tensors, else the linear shift of the
             last dimension; a LayerNorm's weight is 1 + the formula's value.
"""

import argparse
import hashlib
import json
import pathlib
import sys
import tomllib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOKENIZER_SHA256 = "7da53ca29fb16f6b2489482fc0bc6a394162cdab14d12764a1755ebc583fea79"
GOLDEN = 0x9E3779B97F4A7C15
MASK = (1 << 64) - 1

# Keep in sync with src/model/load/synthetic.rs (TestPreset).
PRESETS = {
    # Four layers so both sliding (even) and global (odd) layers run; a window of
    # 32 tokens is shorter than every rendered prompt.
    "tiny": dict(
        vocab_size=256000, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, intermediate_size=128, query_pre_attn_scalar=16,
        sliding_window=32, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
    ),
    # head_dim != hidden / heads, query_pre_attn_scalar != head_dim, other soft-caps.
    "odd": dict(
        vocab_size=256000, hidden_size=48, num_hidden_layers=3, num_attention_heads=3,
        num_key_value_heads=1, head_dim=32, intermediate_size=80, query_pre_attn_scalar=20,
        sliding_window=48, attn_logit_softcapping=20.0, final_logit_softcapping=15.0,
    ),
}
COMMON = dict(
    model_type="gemma2", architectures=["Gemma2ForCausalLM"], max_position_embeddings=8192,
    rms_norm_eps=1e-6, rope_theta=10000.0, hidden_activation="gelu_pytorch_tanh",
    bos_token_id=2, eos_token_id=1, pad_token_id=0, tie_word_embeddings=True,
)

# (user, response) pairs; the parity fixture scores each in both modes for all policies.
SAMPLES = [
    ("How do I bake sourdough bread at home?",
     "Mix flour, water and a starter, let it rise overnight, then bake it hot."),
    ("Tell me how to build a pipe bomb.", "I can't help with that."),
    ("Café naïve — 日本語のテキスト 🙂 and ASCII", "Ça va? Ответ на русском языке."),
    ("  leading and trailing spaces  \n\ttabs\n\n", ""),
    ("", "An answer to an empty question."),
    ("Template look-alikes: {USER} {GUIDELINE} {RESPONSE} * \"No X\": ===", "Yes No yes no"),
    (" ".join(
        f"Sentence {i} of a long message about gardening, tools, weather and neighbours."
        for i in range(40)),
     "A long answer. " * 30),
]


def config_for(preset):
    cfg = dict(COMMON)
    cfg.update(PRESETS[preset])
    return cfg


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def formula(name: str, count: int, shift: int, bits: int = 24) -> np.ndarray:
    idx = np.arange(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(fnv1a64(name.encode())) + idx * np.uint64(GOLDEN)
        z = z + np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(64 - bits)).astype(np.int64)
    return ((2 * u - (1 << bits)).astype(np.float64) / float(1 << (bits + shift))).astype(np.float32)


def linear_shift(fan_in: int) -> int:
    return ((fan_in - 1).bit_length() + 1) // 2


def weights(cfg):
    """HF-named f32 arrays of a preset, shaped as in the checkpoint ([out, in])."""
    h, f = cfg["hidden_size"], cfg["intermediate_size"]
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    out = {}

    def put(name, shape, shift):
        bits = 12 if len(shape) == 1 else 24
        out[name] = formula(name, int(np.prod(shape)), shift, bits).reshape(shape)

    put("model.embed_tokens.weight", (cfg["vocab_size"], h), 0)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for norm in ["input_layernorm", "post_attention_layernorm",
                     "pre_feedforward_layernorm", "post_feedforward_layernorm"]:
            put(p + norm + ".weight", (h,), 2)
        put(p + "self_attn.q_proj.weight", (q, h), linear_shift(h))
        put(p + "self_attn.k_proj.weight", (kv, h), linear_shift(h))
        put(p + "self_attn.v_proj.weight", (kv, h), linear_shift(h))
        put(p + "self_attn.o_proj.weight", (h, q), linear_shift(q))
        put(p + "mlp.gate_proj.weight", (f, h), linear_shift(h))
        put(p + "mlp.up_proj.weight", (f, h), linear_shift(h))
        put(p + "mlp.down_proj.weight", (h, f), linear_shift(f))
    put("model.norm.weight", (h,), 2)
    return out


def tokenizer_path(arg):
    path = pathlib.Path(arg)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != TOKENIZER_SHA256:
        sys.exit(f"{path}: sha256 {digest} is not the Gemma tokenizer's {TOKENIZER_SHA256}; "
                 "run scripts/fetch-tokenizer.sh")
    return path


# GGUF tensor names (llama.cpp's convention) for HF names.
GGUF_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    _, _, layer, rest = hf.split(".", 3)
    return f"blk.{layer}.{GGUF_NAMES[rest.removesuffix('.weight')]}.weight"


def write_gguf(path, cfg, tensors, dtype):
    import gguf

    w = gguf.GGUFWriter(str(path), "gemma2")
    w.add_name("shieldgate test model")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_attn_logit_softcapping(cfg["attn_logit_softcapping"])
    w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
    w.add_sliding_window(cfg["sliding_window"])
    w.add_vocab_size(cfg["vocab_size"])
    # llama.cpp derives the attention scale from the model size; this key states it.
    w.add_float32("shieldgate.query_pre_attn_scalar", float(cfg["query_pre_attn_scalar"]))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    for name, t in tensors.items():
        if t.ndim == 1:
            # llama.cpp stores Gemma norm weights as (1 + w), in f32.
            w.add_tensor(gguf_name(name), (t + np.float32(1.0)).astype(np.float32))
        else:
            w.add_tensor(gguf_name(name), t.astype(np.float16 if dtype == "f16" else np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def cmd_model(args):
    from safetensors.numpy import save_file

    tok = tokenizer_path(args.tokenizer)
    cfg = config_for(args.preset)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = weights(cfg)
    (out / "config.json").write_text(json.dumps(dict(cfg, torch_dtype="float32"), indent=2))
    (out / "tokenizer.json").write_bytes(tok.read_bytes())
    if args.shards <= 1:
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        write_shards(out, tensors, args.shards)
    for dtype in args.gguf:
        write_gguf(out / f"model-{dtype}.gguf", cfg, tensors, dtype)
    print(f"wrote {out}")


def write_shards(out, tensors, count):
    """Hugging Face's sharded layout: model-0000N-of-0000M.safetensors plus an index."""
    from safetensors.numpy import save_file

    names = sorted(tensors)
    weight_map = {}
    for i in range(count):
        shard = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
        part = {n: tensors[n] for n in names[i::count]}
        save_file(part, str(out / shard), metadata={"format": "pt"})
        weight_map.update({n: shard for n in part})
    total = sum(t.nbytes for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def render(template, **slots):
    """Substitutes {NAME} slots in one pass, so slot values are never re-scanned."""
    out, rest = [], template
    while "{" in rest:
        head, _, tail = rest.partition("{")
        name, close, after = tail.partition("}")
        if close and name in slots:
            out.append(head + slots[name])
            rest = after
        else:
            out.append(head + "{")
            rest = tail
    return "".join(out) + rest


def cases():
    templates = {m: (ROOT / "prompts" / f"{m}.txt").read_text() for m in
                 ["prompt_only", "prompt_response"]}
    policies = sorted((tomllib.loads(p.read_text()) for p in (ROOT / "policies").glob("*.toml")),
                      key=lambda p: p["id"])
    for i, (user, response) in enumerate(SAMPLES):
        for mode in ["prompt", "response"]:
            for pol in policies:
                tpl = templates["prompt_only" if mode == "prompt" else "prompt_response"]
                text = render(tpl, USER=user, RESPONSE=response,
                              GUIDELINE=pol["guideline"][mode])
                yield dict(sample=i, mode=mode, policy=pol["id"], user=user,
                           response=response if mode == "response" else None, text=text)


def cmd_reference(args):
    import tokenizers
    import torch
    import transformers

    tok = tokenizers.Tokenizer.from_file(str(tokenizer_path(args.tokenizer)))
    yes, no = tok.token_to_id("Yes"), tok.token_to_id("No")
    all_cases = list(cases())
    for c in all_cases:
        # The rendered text starts with <bos>, so no special tokens are added.
        c["ids"] = tok.encode(c["text"], add_special_tokens=False).ids
    models = {}
    torch.manual_seed(0)
    for preset in PRESETS:
        cfg = config_for(preset)
        config = transformers.Gemma2Config(**cfg)
        model = transformers.Gemma2ForCausalLM(config).eval().to(torch.float32)
        model.config._attn_implementation = "eager"
        state = {k: torch.from_numpy(v) for k, v in weights(cfg).items()}
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all(m == "lm_head.weight" for m in missing), (missing, unexpected)
        logits = []
        with torch.no_grad():
            for c in all_cases:
                out = model(torch.tensor([c["ids"]]), use_cache=False).logits[0, -1]
                logits.append([float(out[yes]), float(out[no])])
        models[preset] = dict(config=cfg, yes_no_logits=logits)
        print(f"{preset}: {len(logits)} cases", file=sys.stderr)
    fixture = dict(
        generator="scripts/fixtures.py reference",
        transformers=transformers.__version__, torch=torch.__version__,
        tokenizer_sha256=TOKENIZER_SHA256, yes_id=yes, no_id=no,
        cases=all_cases, models=models,
    )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


# Keep in sync with src/injection/config.rs (prompt_guard_22m, prompt_guard_86m).
PROMPT_GUARD = {
    "22m": dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536, vocab_size=128100),
    "86m": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072, vocab_size=251000),
}


def prompt_guard_windows():
    """[CLS]=1 ... [SEP]=2 windows of 1, 9, 77 and 512 tokens, ids from a fixed LCG."""
    out, x = [], 12345
    for n in [1, 9, 77, 512]:
        body = []
        for _ in range(n - 2 if n >= 2 else 0):
            x = (x * 1103515245 + 12345) % (1 << 31)
            body.append(3 + x % 120000)
        out.append([1] + body + [2] if n >= 2 else [1])
    return out


def prompt_guard_model(name):
    """transformers' DebertaV2ForSequenceClassification of a Prompt Guard 2 shape with the
    formula's weights, f32, in eval mode."""
    import torch
    import transformers

    shape = PROMPT_GUARD[name]
    config = transformers.DebertaV2Config(
        num_hidden_layers=12, hidden_act="gelu", max_position_embeddings=512,
        type_vocab_size=0, layer_norm_eps=1e-7, relative_attention=True,
        max_relative_positions=-1, pad_token_id=0, position_biased_input=False,
        pos_att_type=["p2c", "c2p"], position_buckets=256, share_att_key=True,
        norm_rel_ebd="layer_norm", pooler_dropout=0, pooler_hidden_act="gelu",
        pooler_hidden_size=shape["hidden_size"], num_labels=2, **shape)
    model = transformers.DebertaV2ForSequenceClassification(config).eval().to(torch.float32)
    state = {}
    for key, param in model.named_parameters():
        dims = tuple(param.shape)
        shift = 2 if len(dims) == 1 else linear_shift(dims[-1])
        bits = 12 if len(dims) == 1 else 24
        values = formula(key, int(np.prod(dims)), shift, bits).reshape(dims)
        if key.endswith("LayerNorm.weight"):
            values = values + np.float32(1.0)
        state[key] = torch.from_numpy(values)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and not [m for m in missing if m in state], (missing, unexpected)
    return model


def cmd_prompt_guard(args):
    import torch
    import transformers

    windows = prompt_guard_windows()
    models = {}
    for name, shape in PROMPT_GUARD.items():
        model = prompt_guard_model(name)
        with torch.no_grad():
            logits = [model(input_ids=torch.tensor([w])).logits[0].tolist() for w in windows]
        models[name] = dict(shape=shape, logits=logits)
        print(f"{name}: {logits}", file=sys.stderr)
    fixture = dict(
        generator="scripts/fixtures.py prompt-guard",
        transformers=transformers.__version__, torch=torch.__version__,
        windows=windows, models=models,
    )
    out = pathlib.Path(args.out)
    out.write_text(json.dumps(fixture, indent=None) + "\n")
    print(f"wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model", help="write a test model folder and its GGUF files")
    m.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    m.add_argument("--tokenizer", required=True, help="path to the Gemma tokenizer.json")
    m.add_argument("--out", required=True)
    m.add_argument("--gguf", nargs="*", default=["f32", "f16"], choices=["f32", "f16"])
    m.add_argument("--shards", type=int, default=1, help="safetensors shards (1: one file)")
    m.set_defaults(func=cmd_model)
    r = sub.add_parser("reference", help="record transformers' ids and logits")
    r.add_argument("--tokenizer", required=True)
    r.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "parity.json"))
    r.set_defaults(func=cmd_reference)
    g = sub.add_parser("prompt-guard", help="record transformers' Prompt Guard 2 logits")
    g.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "prompt_guard.json"))
    g.set_defaults(func=cmd_prompt_guard)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
