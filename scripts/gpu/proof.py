#!/usr/bin/env python3
"""shieldgate's GPU proof, in one run on a machine with an NVIDIA GPU, PyTorch and transformers
(no Rust needed: the CUDA build of shieldgate comes prebuilt, see scripts/gpu/pack.sh).

1. Parity: the committed transformers fixtures (tests/fixtures/parity.json: both templates, all
   four policies, the `tiny` and `odd` test shapes) scored by shieldgate on the GPU in f32
   (target |Δlogit| <= 1e-4) and in bf16, against transformers run on the same GPU in bf16.
   Also the 2B shape: shieldgate and transformers, both bf16, on a few prompts.
2. Speed: 4-policy checks through `shieldgate serve`'s /v1/moderations, so the scorer's own
   queue and batching decide: p50/p99 per bucket (short ~10, medium ~60, long ~400 user tokens)
   one at a time, and checks/s at 1, 16 and 64 concurrent checks.
3. The peer on the same weights (`shieldgate export` writes the HF folder): transformers, bf16,
   SDPA attention, the model card's recipe (one forward per policy prompt) and its batched form
   (all policy prompts of many checks in one padded batch).

Writes proof.json and proof.md to --out. `--device cpu --preset tiny` rehearses every step on a
CPU with the small test shape (numbers then mean nothing).
"""

import argparse
import functools
import http.client
import json
import lzma
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import fixtures  # noqa: E402  (templates, policies and test weights shared with the fixtures)

SENTENCES = [
    "My neighbour keeps parking his van across our shared driveway every single morning.",
    "I asked him politely twice, and both times he laughed and walked away.",
    "The council says it is a private matter and will not send anyone out.",
    "We have a toddler, so getting the car out quickly really matters to us.",
    "What can I say to him that keeps things calm but makes the point clear?",
]
BUCKETS = {"short": 0, "medium": 4, "long": 30}  # sentences after the short question
F32_TARGET = 1e-4  # largest |Δlogit| against the fixtures in f32


def log(*args):
    print(f"[{time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


def unpacked(path, work):
    """The file itself, or its .xz content written to `work`."""
    path = pathlib.Path(path)
    if path.suffix != ".xz":
        return path
    out = work / path.stem
    with lzma.open(path) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    out.chmod(0o755)
    return out


def cuda_library_dirs():
    """Folders holding the CUDA 13 libraries the binary links: pip's nvidia wheels, then a toolkit."""
    found = []
    for base in map(pathlib.Path, sys.path + ["/usr/local/cuda/lib64", "/usr/local/cuda/lib"]):
        for lib in list(base.glob("nvidia/*/lib")) + [base]:
            if any(lib.glob("libcublas.so.13*")) or any(lib.glob("libcurand.so.10*")):
                if str(lib) not in found:
                    found.append(str(lib))
    return found


def text_for(bucket, k):
    """A distinct text per request (nothing can be served from a cache) of the bucket's length."""
    body = " ".join(SENTENCES[i % len(SENTENCES)] for i in range(BUCKETS[bucket]))
    return f"Request {k}: how do I bake sourdough bread at home? {body}".strip()


def nearest_rank(values, q):
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 1)) - 1))]


class Shieldgate:
    def __init__(self, binary, tokenizer, device, env):
        self.binary, self.tokenizer, self.device, self.env = binary, tokenizer, device, env

    def run(self, *args, ok=(0,), **kw):
        p = subprocess.run([str(self.binary), *args], env=self.env, capture_output=True,
                           text=True, **kw)
        if p.returncode not in ok:
            raise RuntimeError(f"shieldgate {' '.join(args[:3])} failed ({p.returncode}): "
                               f"{p.stderr[-2000:]}")
        return p

    def score_jsonl(self, model, dtype, lines):
        """Yes/No logits per (line, policy id); exit code 1 only means something was flagged."""
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
            f.write("".join(json.dumps(line) + "\n" for line in lines))
        p = self.run("score", "--jsonl", "--model", model, "--tokenizer", str(self.tokenizer),
                     "--device", self.device, "--dtype", dtype, "--batch-size", "64",
                     "--file", f.name, ok=(0, 1))
        scored = {}
        for row in map(json.loads, p.stdout.splitlines()):
            if "error" in row:
                raise RuntimeError(f"line {row.get('line')}: {row['error']}")
            for pol in row["policies"]:
                scored[(row["id"], pol["id"])] = (pol["yes_logit"], pol["no_logit"])
        return scored


def transformers_model(cfg_or_dir, dtype, device, attn):
    import torch
    import transformers

    if isinstance(cfg_or_dir, dict):
        config = transformers.Gemma2Config(**cfg_or_dir)
        config._attn_implementation = attn
        model = transformers.Gemma2ForCausalLM(config).eval()
        state = {k: torch.from_numpy(v) for k, v in fixtures.weights(cfg_or_dir).items()}
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
        model.load_state_dict(state, strict=False)
        return model.to(device=device, dtype=dtype)
    return transformers.AutoModelForCausalLM.from_pretrained(
        cfg_or_dir, dtype=dtype, attn_implementation=attn).to(device).eval()


def fastest_transformers_model(folder, dtype, device):
    """SDPA where this transformers version allows it for Gemma 2, else eager attention."""
    try:
        return transformers_model(folder, dtype, device, "sdpa"), "sdpa"
    except ValueError as e:
        log(f"transformers refuses SDPA for Gemma 2 ({str(e)[:80]}...): eager attention")
        return transformers_model(folder, dtype, device, "eager"), "eager"


def last_logits(model, ids, yes, no, device):
    """(Yes, No) logits at the last position of one unpadded prompt, as the model card does."""
    import torch

    with torch.inference_mode():
        out = model(torch.tensor([ids], device=device)).logits[0, -1]
        return float(out[yes]), float(out[no])


def parity(sg, args, torch_device):
    import torch

    fixture = json.loads((ROOT / "tests/fixtures/parity.json").read_text())
    yes, no = fixture["yes_id"], fixture["no_id"]
    groups = {}
    for c in fixture["cases"]:
        groups.setdefault((c["sample"], c["mode"]), c)
    keys = list(groups)
    lines = [{"id": i, "prompt": groups[k]["user"],
              **({"response": groups[k]["response"] or ""} if k[1] == "response" else {})}
             for i, k in enumerate(keys)]
    index = {k: i for i, k in enumerate(keys)}
    results = {}
    for preset in ["tiny", "odd"]:
        reference = fixture["models"][preset]["yes_no_logits"]
        hf = transformers_model(fixture["models"][preset]["config"], torch.bfloat16,
                                torch_device, "eager")
        hf_bf16 = [last_logits(hf, c["ids"], yes, no, torch_device) for c in fixture["cases"]]
        del hf
        row = {"cases": len(fixture["cases"])}
        for dtype in ["f32", "bf16"]:
            scored = sg.score_jsonl(f"synthetic:{preset}", dtype, lines)
            ours = [scored[(index[(c["sample"], c["mode"])], c["policy"])]
                    for c in fixture["cases"]]
            row[f"{dtype}_vs_fixture"] = max_delta(ours, reference)
            if dtype == "bf16":
                row["bf16_vs_transformers_bf16"] = max_delta(ours, hf_bf16)
                row["bf16_p_yes_vs_transformers_bf16"] = max_p_delta(ours, hf_bf16)
        row["transformers_bf16_vs_fixture"] = max_delta(hf_bf16, reference)
        results[preset] = row
        log(f"parity {preset}: {row}")
    return results


def max_delta(a, b):
    return max(max(abs(x[0] - y[0]), abs(x[1] - y[1])) for x, y in zip(a, b, strict=True))


def max_p_delta(a, b):
    import math

    p = lambda t: 1.0 / (1.0 + math.exp(t[1] - t[0]))  # noqa: E731
    return max(abs(p(x) - p(y)) for x, y in zip(a, b, strict=True))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`shieldgate serve` with a config sized for the device; /v1/moderations only."""

    def __init__(self, sg, args, work):
        self.port, admin = free_port(), free_port()
        config = work / "serve.toml"
        config.write_text(f"""
[server]
listen = "127.0.0.1:{self.port}"
admin_listen = "127.0.0.1:{admin}"
request_timeout_ms = 600000
[model]
source = "synthetic:{args.preset}"
tokenizer = "{sg.tokenizer}"
dtype = "bf16"
device = "{sg.device}"
batch_tokens = {args.batch_tokens}
prefill_chunk = {args.prefill_chunk}
[scorer]
queue = 1024
max_batch = {args.max_batch}
timeout_ms = 600000
[upstream]
url = "http://127.0.0.1:9"
""")
        self.log = open(work / "serve.log", "w")
        self.proc = subprocess.Popen([str(sg.binary), "serve", "--config", str(config)],
                                     env=sg.env, stdout=self.log, stderr=subprocess.STDOUT)
        started = time.time()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited {self.proc.returncode}: see serve.log")
            try:
                c = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.time() - started > args.load_timeout:
                raise RuntimeError("serve did not become ready")
            time.sleep(0.5)
        self.load_s = time.time() - started

    def check(self, conn, text):
        body = json.dumps({"input": text})
        started = time.perf_counter()
        conn.request("POST", "/v1/moderations", body, {"content-type": "application/json"})
        answer = conn.getresponse()
        data = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"/v1/moderations: HTTP {answer.status}: {data[:300]!r}")
        return time.perf_counter() - started

    def latencies(self, bucket, count, budget):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        for k in range(3):
            self.check(conn, text_for(bucket, -1 - k))
        times, started = [], time.time()
        while len(times) < count and time.time() - started < budget:
            times.append(self.check(conn, text_for(bucket, len(times))))
        return {"n": len(times), "p50_ms": 1e3 * nearest_rank(times, 0.5),
                "p99_ms": 1e3 * nearest_rank(times, 0.99)}

    def throughput(self, bucket, concurrency, seconds):
        done, errors, stop = [], [], threading.Event()

        def client(t):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
            k = 0
            while not stop.is_set():
                try:
                    done.append((time.time(), self.check(conn, text_for(bucket, t * 1_000_000 + k))))
                except Exception as e:  # noqa: BLE001  (reported, not hidden)
                    errors.append(str(e))
                    return
                k += 1

        threads = [threading.Thread(target=client, args=(t,)) for t in range(concurrency)]
        for t in threads:
            t.start()
        time.sleep(seconds / 4)  # warm-up: batches fill up
        start_count, start = len(done), time.time()
        time.sleep(seconds)
        end_count, end = len(done), time.time()
        stop.set()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(f"{len(errors)} checks failed; first: {errors[0]}")
        window = [d for at, d in done if start <= at <= end]
        return {"concurrency": concurrency, "checks_per_s": (end_count - start_count) / (end - start),
                "p50_ms": 1e3 * nearest_rank(window, 0.5), "p99_ms": 1e3 * nearest_rank(window, 0.99)}

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def speed(sg, args, work):
    server = Server(sg, args, work)
    log(f"serve ready in {server.load_s:.1f} s")
    result = {"load_s": server.load_s, "latency": {}, "throughput": []}
    try:
        for bucket in BUCKETS:
            result["latency"][bucket] = server.latencies(bucket, args.latency_checks, args.phase_s)
            log(f"shieldgate {bucket}: {result['latency'][bucket]}")
        for c in (1, 16, 64):
            result["throughput"].append(server.throughput("short", c, args.phase_s))
            log(f"shieldgate throughput: {result['throughput'][-1]}")
    finally:
        server.stop()
    return result


@functools.cache
def prompt_template_and_policies():
    """The prompt-only template and the built-in policies in id order, read once."""
    template = (ROOT / "prompts/prompt_only.txt").read_text()
    policies = sorted((fixtures.tomllib.loads(p.read_text()) for p in (ROOT / "policies").glob("*.toml")),
                      key=lambda p: p["id"])
    return template, policies


def rendered_ids(tok, text):
    """The four policy prompts of a user text, as token ids (the template starts with <bos>)."""
    template, policies = prompt_template_and_policies()
    return [tok.encode(fixtures.render(template, USER=text, RESPONSE="",
                                       GUIDELINE=p["guideline"]["prompt"]),
                       add_special_tokens=False).ids for p in policies]


def peer(sg, args, work, torch_device, tok):
    import torch

    folder = work / "hf"
    sg.run("export", "--model", f"synthetic:{args.preset}", "--tokenizer", str(sg.tokenizer),
           "--out", str(folder), "--dtype", "bf16", "--force")
    yes, no = tok.token_to_id("Yes"), tok.token_to_id("No")
    model, attention = fastest_transformers_model(str(folder), torch.bfloat16, torch_device)
    sync = torch.cuda.synchronize if torch_device == "cuda" else (lambda: None)
    result = {"attention": attention, "latency": {}, "throughput": [], "prompt_tokens": {}}

    def card_check(text):
        started = time.perf_counter()
        for ids in rendered_ids(tok, text):
            last_logits(model, ids, yes, no, torch_device)
        sync()
        return time.perf_counter() - started

    def batched(texts):
        prompts = [ids for t in texts for ids in rendered_ids(tok, t)]
        width = max(map(len, prompts))
        pad = [[0] * (width - len(p)) + p for p in prompts]  # left padding: the last is real
        mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
        with torch.inference_mode():
            out = model(input_ids=torch.tensor(pad, device=torch_device),
                        attention_mask=torch.tensor(mask, device=torch_device),
                        logits_to_keep=1).logits[:, -1]
            pair = out[:, [yes, no]].float().softmax(-1)[:, 0].cpu()
        return pair

    for bucket in BUCKETS:
        result["prompt_tokens"][bucket] = len(rendered_ids(tok, text_for(bucket, 0))[0])
        for k in range(2):
            card_check(text_for(bucket, -1 - k))
        times, started = [], time.time()
        while len(times) < args.latency_checks and time.time() - started < args.phase_s:
            times.append(card_check(text_for(bucket, len(times))))
        result["latency"][bucket] = {"n": len(times), "p50_ms": 1e3 * nearest_rank(times, 0.5),
                                     "p99_ms": 1e3 * nearest_rank(times, 0.99)}
        log(f"transformers card {bucket}: {result['latency'][bucket]}")
    for c in (1, 16, 64):
        batched([text_for("short", -k) for k in range(c)])
        checks, started = 0, time.time()
        while time.time() - started < args.phase_s:
            batched([text_for("short", checks + k) for k in range(c)])
            checks += c
        sync()
        result["throughput"].append({"checks_per_batch": c,
                                     "checks_per_s": checks / (time.time() - started)})
        log(f"transformers batched: {result['throughput'][-1]}")
    # The 2B shape's parity: shieldgate's bf16 logits against transformers' on the same prompts.
    texts = [text_for(b, k) for b in BUCKETS for k in range(2)]
    scored = sg.score_jsonl(f"synthetic:{args.preset}", "bf16",
                            [{"id": i, "prompt": t} for i, t in enumerate(texts)])
    policy_ids = [p["id"] for p in prompt_template_and_policies()[1]]
    ours = [scored[(i, pid)] for i in range(len(texts)) for pid in policy_ids]
    theirs = [last_logits(model, ids, yes, no, torch_device)
              for t in texts for ids in rendered_ids(tok, t)]
    result["parity_bf16"] = {"prompts": len(ours), "max_abs_logit": max_delta(ours, theirs),
                             "max_abs_p_yes": max_p_delta(ours, theirs)}
    log(f"{args.preset} bf16 parity: {result['parity_bf16']}")
    return result


def table(report):
    lines = [f"GPU: {report['gpu']}; shieldgate {report['shieldgate']}; torch {report['torch']}, "
             f"transformers {report['transformers']}; model synthetic:{report['preset']} bf16", ""]
    if "parity" in report:
        lines += ["| shape | cases | f32 vs fixture | bf16 vs transformers bf16 (logit / P(Yes)) "
                  "| transformers bf16 vs fixture |", "|---|---|---|---|---|"]
        for preset, r in report["parity"].items():
            lines.append(f"| {preset} | {r['cases']} | {r['f32_vs_fixture']:.2e} | "
                         f"{r['bf16_vs_transformers_bf16']:.2e} / "
                         f"{r['bf16_p_yes_vs_transformers_bf16']:.2e} | "
                         f"{r['transformers_bf16_vs_fixture']:.2e} |")
        lines.append("")
    if "speed" in report and "peer" in report:
        s, p = report["speed"], report["peer"]
        lines += [f"transformers attention: {p['attention']}", "",
                  "| 4-policy check | prompt tokens | shieldgate p50 / p99 ms | "
                  "transformers (card) p50 / p99 ms | ratio p50 |", "|---|---|---|---|---|"]
        for b in BUCKETS:
            a, t = s["latency"][b], p["latency"][b]
            lines.append(f"| {b} | {p['prompt_tokens'][b]} | {a['p50_ms']:.1f} / {a['p99_ms']:.1f} | "
                         f"{t['p50_ms']:.1f} / {t['p99_ms']:.1f} | {a['p50_ms'] / t['p50_ms']:.3f} |")
        lines += ["", "| concurrent checks | shieldgate checks/s (p50 / p99 ms) | "
                  "transformers batched checks/s | ratio |", "|---|---|---|---|"]
        for a, t in zip(s["throughput"], p["throughput"]):
            lines.append(f"| {a['concurrency']} | {a['checks_per_s']:.1f} ({a['p50_ms']:.1f} / "
                         f"{a['p99_ms']:.1f}) | {t['checks_per_s']:.1f} | "
                         f"{a['checks_per_s'] / t['checks_per_s']:.2f} |")
        pb = p["parity_bf16"]
        lines += ["", f"{report['preset']} bf16, {pb['prompts']} prompts: max |Δlogit| "
                  f"{pb['max_abs_logit']:.3g}, max |ΔP(Yes)| {pb['max_abs_p_yes']:.3g} "
                  "(shieldgate against transformers)"]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bin", required=True, help="shieldgate built with --features cuda (.xz ok)")
    ap.add_argument("--tokenizer", required=True, help="the Gemma tokenizer.json (.xz ok)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda", help="shieldgate's device: cuda, cuda:N or cpu")
    ap.add_argument("--preset", default="2b", help="the synthetic shape timed (2b, 9b, ...)")
    ap.add_argument("--steps", default="parity,speed,peer")
    ap.add_argument("--phase-s", type=float, default=8.0, help="longest time of one measurement")
    ap.add_argument("--latency-checks", type=int, default=50)
    ap.add_argument("--batch-tokens", type=int, default=262144)
    ap.add_argument("--prefill-chunk", type=int, default=2048)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--load-timeout", type=float, default=300)
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="shieldgate-proof-"))
    import tokenizers
    import torch
    import transformers

    torch_device = "cuda" if args.device.startswith("cuda") else "cpu"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(cuda_library_dirs() + [env.get("LD_LIBRARY_PATH", "")])
    env.setdefault("RUST_LOG", "warn")
    sg = Shieldgate(unpacked(args.bin, work).resolve(), unpacked(args.tokenizer, work).resolve(),
                    args.device, env)
    version = sg.run("--version").stdout.strip()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU rehearsal)"
    report = {"gpu": gpu, "shieldgate": version, "torch": torch.__version__,
              "transformers": transformers.__version__, "preset": args.preset,
              "device": args.device}
    log(f"{version} on {gpu}; CUDA libraries from {env['LD_LIBRARY_PATH']}")
    tok = tokenizers.Tokenizer.from_file(str(sg.tokenizer))
    steps = args.steps.split(",")
    failed = False
    for step in steps:
        started = time.time()
        try:
            if step == "parity":
                report["parity"] = parity(sg, args, torch_device)
                worst = max(r["f32_vs_fixture"] for r in report["parity"].values())
                if worst > F32_TARGET:
                    raise AssertionError(f"f32 |Δlogit| {worst:.2e} > {F32_TARGET:.0e}")
            elif step == "speed":
                report["speed"] = speed(sg, args, work)
            elif step == "peer":
                report["peer"] = peer(sg, args, work, torch_device, tok)
            else:
                raise ValueError(f"unknown step {step}")
        except Exception as e:  # noqa: BLE001  (one failed step still leaves the others' numbers)
            failed = True
            report.setdefault("errors", {})[step] = repr(e)
            log(f"{step} FAILED: {e!r}")
        log(f"{step}: {time.time() - started:.1f} s")
        (out / "proof.json").write_text(json.dumps(report, indent=1) + "\n")
    for name in ["serve.log"]:
        if (work / name).exists():
            shutil.copy(work / name, out / name)
    try:
        summary = table(report)
    except KeyError as e:  # a failed step leaves its part of the table out
        summary = f"(no table: {e!r} missing; see proof.json)\n"
    (out / "proof.md").write_text(summary)
    print(summary)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
