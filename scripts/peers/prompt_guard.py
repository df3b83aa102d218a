#!/usr/bin/env python3
"""Times transformers' Prompt Guard 2 (f32, eager) on the windows the injection benchmark
sends on stdin (JSON: {"shape": "22m", "threads": 2, "rounds": 5, "cases": {"name": [[ids]]}}),
with the same seeded weights (scripts/fixtures.py). Prints {"name": seconds per run} as JSON:
the best of `rounds` runs of each case (one forward pass over its windows, padded)."""

import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import fixtures  # noqa: E402


def main():
    import torch

    job = json.load(sys.stdin)
    torch.set_num_threads(job["threads"])
    model = fixtures.prompt_guard_model(job["shape"])
    out = {}
    with torch.no_grad():
        for name, windows in job["cases"].items():
            width = max(len(w) for w in windows)
            ids = torch.tensor([w + [0] * (width - len(w)) for w in windows])
            mask = torch.tensor([[1] * len(w) + [0] * (width - len(w)) for w in windows])
            model(input_ids=ids, attention_mask=mask)
            best = float("inf")
            for _ in range(job["rounds"]):
                started = time.perf_counter()
                model(input_ids=ids, attention_mask=mask)
                best = min(best, time.perf_counter() - started)
            out[name] = best
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
