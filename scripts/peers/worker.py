#!/usr/bin/env python3
"""One peer engine for scripts/peers/bench.py, driven over stdin/stdout.

    worker.py transformers MODEL_DIR float32|bfloat16 THREADS
    worker.py llama MODEL.gguf THREADS

After loading it prints one JSON line {"ready": true, "info": "..."}. Then for each input line
{"prompts": [[token ids], ...]} (one prompt per policy) it prints
{"logits": [[yes, no], ...], "tokens_run": N}: the last position's Yes/No logits of each
prompt and the number of tokens it ran through the model.

transformers follows the ShieldGemma model card: one forward pass per prompt, no cache.
llama.cpp keeps its KV cache between the prompts of one check, like its prompt cache does for
a server: each prompt decodes only the tokens after the prefix it shares with the previous one.
The cache is cleared before each check so that repeated checks do not hit it.
"""

import json
import sys

YES, NO = 3553, 1294


def transformers_engine(model_dir, dtype, threads):
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, dtype)).eval()
    info = (f"transformers {transformers.__version__}, torch {torch.__version__}, {dtype}, "
            f"attention {model.config._attn_implementation}, {torch.get_num_threads()} threads")

    def check(prompts):
        logits = []
        with torch.inference_mode():
            for ids in prompts:
                last = model(torch.tensor([ids])).logits[0, -1].float()
                logits.append([float(last[YES]), float(last[NO])])
        return logits, sum(len(ids) for ids in prompts)

    return info, check


def llama_engine(path, threads):
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(model_path=path, n_ctx=4096, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, logits_all=False, verbose=False)
    features = llama_cpp.llama_print_system_info().decode().strip()
    info = f"llama-cpp-python {llama_cpp.__version__}, {threads} threads, {features}"
    n_vocab = llm.n_vocab()

    def check(prompts):
        llm.reset()
        logits, run = [], 0
        for ids in prompts:
            cached = list(llm.input_ids[: llm.n_tokens])
            keep = 0
            # Keep at least one token to decode: the logits come from the last one decoded.
            while keep < min(len(cached), len(ids) - 1) and cached[keep] == ids[keep]:
                keep += 1
            llm.n_tokens = keep
            llm.eval(ids[keep:])
            run += len(ids) - keep
            last = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))
            logits.append([float(last[YES]), float(last[NO])])
        return logits, run

    return info, check


def main():
    kind = sys.argv[1]
    if kind == "transformers":
        info, check = transformers_engine(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif kind == "llama":
        info, check = llama_engine(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(f"worker.py: unknown engine {kind!r} (transformers or llama)")
    print(json.dumps({"ready": True, "info": info}), flush=True)
    for line in sys.stdin:
        logits, run = check(json.loads(line)["prompts"])
        print(json.dumps({"logits": logits, "tokens_run": run}), flush=True)


if __name__ == "__main__":
    main()
