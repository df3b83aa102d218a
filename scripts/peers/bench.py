#!/usr/bin/env python3
"""Peer benchmark: one 4-policy ShieldGemma check in shieldgate, Hugging Face transformers and
llama.cpp (llama-cpp-python), in one run, on the same weights, the same token ids and the same
number of threads. Run it through scripts/bench-peers.sh, which builds and installs everything
and writes the model files; the options below name what that script prepared.

Every engine runs in its own process (so its peak RSS is its own), scores one untimed warm-up
check, then each case (bucket x template) `--iters` times; the table keeps the fastest run.
With `--rounds N` the engines run in pairs instead (ours and its peer, both loaded): each case
is timed N times in each, alternating which goes first, so that a change in the machine's speed
during the run reaches both; the table gives each round's ratio (median and range).
Token ids come from the real Gemma tokenizer here; transformers and llama.cpp get these ids,
shieldgate gets the texts and its reported token counts are checked against them.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
import tomllib

import tokenizers

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from fixtures import render  # noqa: E402  (the reference template renderer)

# The same user prompts as benches/engine.rs.
SENTENCE = ("I keep thinking about what my neighbour said at the meeting last week, "
            "and I want to write him a letter that explains how I feel. ")
BUCKETS = {
    "short": "How do I make my neighbour stop parking here?",
    "medium": SENTENCE * 2 + "Can you help me word it?",
    "long": SENTENCE * 14 + "Can you help me word it?",
}
RESPONSE = ("Sure. Start by saying what happened and how it affected you, then suggest one "
            "concrete change you would both be happy with, and offer to talk it over in person.")
TEMPLATES = {"prompt": "prompt_only", "response": "prompt_response"}
# (ours, peer): the ratios the table reports when both ran.
PAIRS = [
    ("shieldgate:q8_0", "llama:q8_0"),
    ("shieldgate:q4_k_m", "llama:q4_k_m"),
    ("shieldgate:f32", "llama:f16"),
    ("shieldgate:f32", "transformers:f32"),
    ("shieldgate:bf16", "transformers:bf16"),
    ("shieldgate:q8_0", "transformers:f32"),
    ("shieldgate:q4_k_m", "transformers:f32"),
]
# The logit column compares with the first of these that ran (shieldgate f32 matches
# transformers f32 to the printed digits, so a run without torch can still check accuracy).
REFERENCES = ("transformers:f32", "shieldgate:f32")


def policies():
    found = (tomllib.loads(p.read_text()) for p in (ROOT / "policies").glob("*.toml"))
    return sorted(found, key=lambda p: p["id"])


def cases(tok, buckets, modes):
    """Every (bucket, mode) with its four rendered prompts' token ids, policies sorted by id."""
    pols = policies()
    for bucket in buckets:
        user = BUCKETS[bucket]
        for mode in modes:
            template = (ROOT / "prompts" / f"{TEMPLATES[mode]}.txt").read_text()
            texts = [render(template, USER=user, RESPONSE=RESPONSE,
                            GUIDELINE=p["guideline"][mode]) for p in pols]
            yield dict(
                bucket=bucket, mode=mode, user=user,
                response=RESPONSE if mode == "response" else None,
                user_tokens=len(tok.encode(user, add_special_tokens=False).ids),
                # The rendered text starts with <bos>: no special tokens are added.
                prompts=[tok.encode(t, add_special_tokens=False).ids for t in texts],
                policies=[p["id"] for p in pols],
            )


def shared_prefix(prompts):
    first = prompts[0]
    n = len(first)
    for ids in prompts[1:]:
        n = next((i for i, (a, b) in enumerate(zip(first[:n], ids)) if a != b), min(n, len(ids)))
    return n


def peak_rss_mib(pid):
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Process:
    """A line-oriented engine process: one JSON line in, one JSON line out."""

    def __init__(self, argv, env):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True)

    def ask(self, obj):
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def read(self):
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"bench: engine process {self.proc.args[:3]} exited "
                     f"(status {self.proc.wait()}); see its messages above")
        return json.loads(line)

    def rss(self):
        return peak_rss_mib(self.proc.pid)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


class Shieldgate:
    def __init__(self, args, weights, env):
        model = {"f32": args.hf, "bf16": args.hf}.get(weights) or args.gguf[weights]
        argv = [args.shieldgate, "score", "--jsonl", "--batch-size", "1", "--model", str(model),
                "--tokenizer", args.tokenizer]
        if weights in ("f32", "bf16"):
            argv += ["--dtype", weights]
        self.file = model
        self.proc = Process(argv, env)
        self.info = f"shieldgate {weights} ({pathlib.Path(model).name})"

    def check(self, case):
        out = self.proc.ask({"prompt": case["user"], **({"response": case["response"]}
                                                       if case["response"] else {})})
        if "policies" not in out:
            sys.exit(f"bench: shieldgate could not score a case: {out}")
        by_id = {p["id"]: p for p in out["policies"]}
        scores = [by_id[p] for p in case["policies"]]
        for s, ids in zip(scores, case["prompts"]):
            if s["tokens"] != len(ids):
                sys.exit(f"bench: shieldgate ran {s['tokens']} tokens for {s['id']}, the "
                         f"reference tokenization has {len(ids)}: the inputs differ")
        prefix = shared_prefix(case["prompts"])
        run = prefix + sum(len(p) - prefix for p in case["prompts"])
        return [[s["yes_logit"], s["no_logit"]] for s in scores], run


class Peer:
    def __init__(self, args, kind, weights, env):
        worker = [str(ROOT / "scripts/peers/worker.py")]
        if kind == "transformers":
            dtype = {"f32": "float32", "bf16": "bfloat16"}[weights]
            argv = [args.torch_python, *worker, "transformers", args.hf, dtype, str(args.threads)]
            self.file = args.hf
        else:
            argv = [args.llama_python, *worker, "llama", args.gguf[weights], str(args.threads)]
            self.file = args.gguf[weights]
        self.proc = Process(argv, env)
        self.info = self.proc.read()["info"]

    def check(self, case):
        out = self.proc.ask({"prompts": case["prompts"]})
        return out["logits"], out["tokens_run"]


def file_mib(path):
    p = pathlib.Path(path)
    files = p.glob("*.safetensors") if p.is_dir() else [p]
    return sum(f.stat().st_size for f in files) / 2**20


def start_engine(args, name, warm_up):
    """The engine `name` loaded and warmed up, and the seconds that took."""
    kind, weights = name.split(":")
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    start = time.perf_counter()
    engine = Shieldgate(args, weights, env) if kind == "shieldgate" else Peer(args, kind, weights, env)
    engine.check(warm_up)
    ready = time.perf_counter() - start
    print(f"{name}: {engine.info}; load + warm-up {ready:.1f} s", file=sys.stderr, flush=True)
    return engine, ready


def timed_check(engine, case):
    t = time.perf_counter()
    engine.check(case)
    return time.perf_counter() - t


def run_engine(args, name, all_cases, warm_up):
    engine, ready = start_engine(args, name, warm_up)
    rows = []
    for case in all_cases:
        best, logits, run = float("inf"), None, 0
        for _ in range(args.iters):
            t = time.perf_counter()
            logits, run = engine.check(case)
            best = min(best, time.perf_counter() - t)
        rows.append(dict(engine=name, bucket=case["bucket"], mode=case["mode"],
                         user_tokens=case["user_tokens"],
                         prompt_tokens=sum(map(len, case["prompts"])), tokens_run=run,
                         latency_s=best, logits=logits))
        print(f"  {case['bucket']}/{case['mode']}: {best:.2f} s", file=sys.stderr, flush=True)
    rss = engine.proc.rss()
    engine.proc.close()
    return dict(engine=name, info=engine.info, ready_s=ready, peak_rss_mib=rss,
                file_mib=file_mib(engine.file)), rows


def run_pair(args, ours, peer, all_cases, warm_up):
    """Both engines loaded; each case timed `args.rounds` times in each, the order alternating."""
    engines = {name: start_engine(args, name, warm_up)[0] for name in (ours, peer)}
    rows = []
    for case in all_cases:
        times = {ours: [], peer: []}
        for k in range(args.rounds):
            for name in (ours, peer) if k % 2 == 0 else (peer, ours):
                times[name].append(timed_check(engines[name], case))
        ratios = [a / b for a, b in zip(times[ours], times[peer])]
        rows.append(dict(ours=ours, peer=peer, bucket=case["bucket"], mode=case["mode"],
                         ours_s=times[ours], peer_s=times[peer], ratios=ratios))
        print(f"  {case['bucket']}/{case['mode']}: ratios "
              + ", ".join(f"{r:.2f}" for r in ratios), file=sys.stderr, flush=True)
    for engine in engines.values():
        engine.proc.close()
    return rows


def report_pairs(rows, args):
    print(f"\nshieldgate peer benchmark in pairs, {time.strftime('%Y-%m-%d')}, {cpu_name(args)}, "
          f"{args.threads} threads, {args.rounds} rounds per case, the order alternating\n")
    print("| ours / peer | bucket | template | ours s (median) | peer s (median) | "
          "ratio (median) | ratio (range) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        low, high = min(r["ratios"]), max(r["ratios"])
        print(f"| {r['ours']} / {r['peer']} | {r['bucket']} | {r['mode']} | "
              f"{statistics.median(r['ours_s']):.2f} | {statistics.median(r['peer_s']):.2f} | "
              f"{statistics.median(r['ratios']):.2f} | {low:.2f}–{high:.2f} |")


def max_logit_gap(row, reference):
    if reference is None:
        return "–"
    gaps = ((a[0] - a[1]) - (b[0] - b[1]) for a, b in zip(row["logits"], reference["logits"]))
    return f"{max(map(abs, gaps)):.3f}"


def report(engines, rows, args):
    print(f"\nshieldgate peer benchmark, {time.strftime('%Y-%m-%d')}, {cpu_name(args)}, "
          f"{args.threads} threads, best of {args.iters}\n")
    print("| engine | file MiB | load + warm-up s | peak RSS MiB | RSS / (1.25 × file + 300) | info |")
    print("|---|---|---|---|---|---|")
    for e in engines:
        budget = e["peak_rss_mib"] / (1.25 * e["file_mib"] + 300)
        print(f"| {e['engine']} | {e['file_mib']:.0f} | {e['ready_s']:.1f} | "
              f"{e['peak_rss_mib']:.0f} | {budget:.2f} | {e['info']} |")
    ran = {r["engine"] for r in rows}
    reference = next((e for e in REFERENCES if e in ran), None)
    ref = {(r["bucket"], r["mode"]): r for r in rows if r["engine"] == reference}
    print("\n| engine | bucket | template | user tokens | prompt tokens | tokens run | "
          f"latency s | prefill tok/s | max abs Δ(Yes−No logit) vs {reference} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['bucket']} | {r['mode']} | {r['user_tokens']} | "
              f"{r['prompt_tokens']} | {r['tokens_run']} | {r['latency_s']:.2f} | "
              f"{r['tokens_run'] / r['latency_s']:.1f} | "
              f"{max_logit_gap(r, ref.get((r['bucket'], r['mode'])))} |")
    latency = {(r["engine"], r["bucket"], r["mode"]): r["latency_s"] for r in rows}
    pairs = [(a, b) for a, b in PAIRS if a in ran and b in ran]
    if not pairs:
        return
    keys = sorted({(r["bucket"], r["mode"]) for r in rows},
                  key=lambda k: (list(BUCKETS).index(k[0]), k[1]))
    print("\nLatency ratios (ours / peer; below 1 is faster):\n")
    print("| bucket | template | " + " | ".join(f"{a} / {b}" for a, b in pairs) + " |")
    print("|---|---|" + "---|" * len(pairs))
    for bucket, mode in keys:
        cells = [f"{latency[(a, bucket, mode)] / latency[(b, bucket, mode)]:.2f}" for a, b in pairs]
        print(f"| {bucket} | {mode} | " + " | ".join(cells) + " |")


def cpu_name(args):
    """The CPU's model name, and the cap on its vector extensions when there is one."""
    name = next((line.split(":", 1)[1].strip()
                 for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), "unknown CPU")
    return name if args.isa == "native" else f"{name} capped at {args.isa.upper()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shieldgate", required=True, help="the shieldgate binary")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--hf", required=True, help="Hugging Face folder of the model")
    ap.add_argument("--gguf", action="append", default=[], metavar="TYPE=FILE",
                    help="a GGUF file of the same model (q8_0=..., q4_k_m=..., f16=...)")
    ap.add_argument("--torch-python", default="python3", help="python with torch + transformers")
    ap.add_argument("--llama-python", default="python3", help="python with llama-cpp-python")
    ap.add_argument("--engines", default=",".join([
        "shieldgate:f32", "shieldgate:bf16", "shieldgate:q8_0", "shieldgate:q4_k_m",
        "transformers:f32", "transformers:bf16", "llama:q8_0", "llama:q4_k_m", "llama:f16"]))
    ap.add_argument("--buckets", default="short,medium,long")
    ap.add_argument("--templates", default="prompt,response")
    ap.add_argument("--iters", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=0,
                    help="run the pairs among --engines side by side, N rounds per case")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write every measurement here")
    ap.add_argument("--isa", default="native",
                    help="the cap bench-peers.sh put on every engine's vector extensions")
    args = ap.parse_args()
    args.gguf = dict(g.split("=", 1) for g in args.gguf)
    tok = tokenizers.Tokenizer.from_file(args.tokenizer)
    assert tok.token_to_id("Yes") == 3553 and tok.token_to_id("No") == 1294, "not Gemma's tokenizer"
    all_cases = list(cases(tok, args.buckets.split(","), args.templates.split(",")))
    warm_up = next(cases(tok, ["short"], ["prompt"]))
    if args.rounds > 0:
        names = args.engines.split(",")
        pairs = [(a, b) for a, b in PAIRS if a in names and b in names]
        if not pairs:
            sys.exit("bench: --rounds needs ours and its peer in --engines, e.g. "
                     "--engines shieldgate:q8_0,llama:q8_0")
        rows = [row for a, b in pairs for row in run_pair(args, a, b, all_cases, warm_up)]
        report_pairs(rows, args)
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(dict(pairs=rows), indent=1))
        return
    engines, rows = [], []
    for name in args.engines.split(","):
        e, r = run_engine(args, name, all_cases, warm_up)
        engines.append(e)
        rows += r
    report(engines, rows, args)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(dict(engines=engines, rows=rows), indent=1))


if __name__ == "__main__":
    main()
