"""Communication against compute per MoE layer for 1 to 4 ranks on this machine
(docs/distributed.md): `megamoe bench` under `mpirun -np N` with --dist-stats, one OpenMP thread
per rank, on a synthetic model whose routed experts dominate its weights (bench/dist/model.json).

    /usr/bin/python3 bench/dist/run.py build-dist/megamoe [--ranks 1,2,3,4] [--runs 3] [--placement-ranks 3]

Then, with --placement-ranks N: expert loads measured by `generate --expert-stats`, `megamoe
placement` with 0 and 2N redundant experts, and the measured imbalance of each placement on other
tokens (max/mean expert rows per rank, mean over MoE layers).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "dist"))
from dist_harness import MPI_ENV  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("megamoe")
    parser.add_argument("--ranks", default="1,2,3,4")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--gen-tokens", type=int, default=16)
    parser.add_argument("--placement-ranks", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "model")
        subprocess.run([args.megamoe, "synth", "--model-config", os.path.join(HERE, "model.json"), "--dtype", "bf16",
                        "--output", model], check=True, env=MPI_ENV)
        rows = []
        for ranks in [int(r) for r in args.ranks.split(",") if r]:
            stats = os.path.join(tmp, f"stats-{ranks}.json")
            command = [args.megamoe, "bench", "--model", model, "--prompt-tokens", str(args.prompt_tokens),
                       "--gen-tokens", str(args.gen_tokens), "--runs", str(args.runs), "--json", "--threads", "1"]
            if ranks > 1:
                command = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(ranks), *command,
                           "--dist-stats", stats]
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True, env=MPI_ENV).stdout)
            row = {"ranks": ranks, "prefill_tokens_per_s": result["prefill_tokens_per_s"],
                   "decode_tokens_per_s": result["decode_tokens_per_s"]}
            if ranks > 1:
                s = json.load(open(stats))
                r0 = s["per_rank"][0]
                for kind in ("many_tokens", "one_token"):
                    row[kind] = {k: r0[kind][k] for k in ("expert_ms_per_layer", "exchange_ms_per_layer",
                                                          "combine_ms_per_layer", "bytes_sent_per_layer")}
                row["rss_mb"] = [round(r["rss_bytes"] / 1e6, 1) for r in s["per_rank"]]
                row["rss_file_mb"] = [round(r["rss_file_bytes"] / 1e6, 1) for r in s["per_rank"]]
                row["experts_held"] = [r["experts_held"] for r in s["per_rank"]]
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.placement_ranks > 1:
            placement_experiment(args.megamoe, model, tmp, args.placement_ranks)


def placement_experiment(megamoe, model, tmp, ranks):
    def run(*command):
        return subprocess.run(list(map(str, command)), check=True, capture_output=True, text=True, env=MPI_ENV)

    vocab = json.load(open(os.path.join(model, "config.json")))["vocab_size"]
    stats = os.path.join(tmp, "expert-stats.json")
    prompt = ",".join(str(i * 7 % vocab) for i in range(1, 200))
    other = ",".join(str(i * 13 % vocab) for i in range(1, 200))  # tokens the loads were not measured on
    run(megamoe, "generate", "--model", model, "--prompt-ids", prompt,
        "--max-tokens", 32, "--temperature", 0, "--ignore-eos", "--print-ids", "--expert-stats", stats)
    for redundant in (None, 0, 2 * ranks):
        flags = []
        line = {"ranks": ranks, "placement": "contiguous" if redundant is None else f"balanced, {redundant} redundant"}
        if redundant is not None:
            placement = os.path.join(tmp, f"placement-{redundant}.json")
            printed = run(megamoe, "placement", "--model", model, "--expert-stats", stats, "--ranks", ranks,
                          "--redundant-experts", redundant, "--output", placement).stdout
            line["predicted"] = printed.strip()
            flags = ["--placement", placement]
        for name, tokens in (("measured_imbalance_same_prompt", prompt), ("measured_imbalance_other_tokens", other)):
            dist_stats = os.path.join(tmp, "placement-stats.json")
            run("mpirun", "--oversubscribe", "--bind-to", "none", "-np", ranks, megamoe, "logits", "--model", model,
                "--tokens", tokens, "--output", os.path.join(tmp, "l.npy"), "--dist-stats", dist_stats, *flags)
            line[name] = json.load(open(dist_stats))["measured_imbalance"]
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
