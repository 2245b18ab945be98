#!/usr/bin/env python3
"""Projects `megamoe bench` figures of the few-layer DeepSeek-V4.1 model at the released shapes
(bench/model/v41-flash-layers.json) to the whole 40-layer model on the same machine.

Decode reads weights: at the same fraction of the bandwidth roofline, tokens/s scale with the
inverse of the weight bytes a token reads (`inspect`: active_weight_bytes_per_token). Prefill
multiplies: tokens/s scale with the inverse of the active parameters per prompt token
(`inspect --context P`: prefill_active_parameters, which counts the decoder layers only where
they run and the head once). Attention's share grows with the context, which this ignores at the
prompt lengths bench uses.

    bench/model/project_v41.py out/bench-model/v41-flash-layers-fp8-threads2-round1.json [...]
"""
import argparse
import json
import os
import statistics
import subprocess

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def inspect(megamoe, config, context):
    out = subprocess.run([megamoe, "inspect", config, "--json", "--context", str(context)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="megamoe bench --json outputs of one thread count")
    parser.add_argument("--megamoe", default=os.path.join(ROOT, "build", "megamoe"))
    parser.add_argument("--bench-config", default=os.path.join(ROOT, "bench", "model", "v41-flash-layers.json"))
    parser.add_argument("--released-config", default=os.path.join(ROOT, "configs", "deepseek-v41-flash.json"))
    args = parser.parse_args()
    runs = [json.load(open(path)) for path in args.results]
    prompt = runs[0]["prompt_tokens"]
    measured = {key: statistics.median(r[key] for r in runs)
                for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "bandwidth_gb_s")}
    few, full = inspect(args.megamoe, args.bench_config, prompt), inspect(args.megamoe, args.released_config, prompt)
    decode_bytes = runs[0]["active_weight_bytes_per_token"]
    result = {
        "threads": runs[0]["threads"],
        "prompt_tokens": prompt,
        "runs": len(runs),
        "measured": {**measured, "layers": few["layers"], "active_weight_bytes_per_token": decode_bytes,
                     "decode_roofline_fraction": measured["decode_tokens_per_s"] * decode_bytes
                     / (measured["bandwidth_gb_s"] * 1e9),
                     "prefill_active_parameters": few["prefill_active_parameters"]},
        "projected_40_layers": {
            "active_weight_bytes_per_token": full["active_weight_bytes_per_token"],
            "decode_tokens_per_s": measured["decode_tokens_per_s"] * decode_bytes / full["active_weight_bytes_per_token"],
            "prefill_active_parameters": full["prefill_active_parameters"],
            "prefill_tokens_per_s": measured["prefill_tokens_per_s"] * few["prefill_active_parameters"]
            / full["prefill_active_parameters"],
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
