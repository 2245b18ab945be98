"""Medians and ratios of bench/llama_cpp/run.sh's results: for each format, thread count and prompt,
megamoe's and llama.cpp's prefill and decode tokens/s (medians over rounds), megamoe / llama.cpp, and
each engine's decode as a fraction of the measured bandwidth roofline (megamoe bench's: the run's read
bandwidth over the bytes a decoded token reads, the experts' expected share). Prints a Markdown table.

    /usr/bin/python3 bench/llama_cpp/summarize.py out/bench-llama-cpp
"""
import glob
import json
import os
import re
import statistics
import sys


def main(out):
    rows = {}
    for path in sorted(glob.glob(os.path.join(out, "megamoe-*.json"))):
        tag = os.path.basename(path)[len("megamoe-"):-len(".json")]
        dtype, threads, prompt, _ = re.fullmatch(r"(.+)-t(\d+)-p(\d+)-r(\d+)", tag).groups()
        with open(path) as f:
            ours = json.load(f)
        with open(os.path.join(out, f"llama-prefill-{tag}.json")) as f:
            prefill = json.load(f)[0]["avg_ts"]
        with open(os.path.join(out, f"llama-decode-{tag}.json")) as f:
            decode = json.load(f)[0]["avg_ts"]
        entry = rows.setdefault((dtype, int(threads), int(prompt)), {k: [] for k in ("mp", "md", "lp", "ld", "rf", "rl")})
        entry["mp"].append(ours["prefill_tokens_per_s"])
        entry["md"].append(ours["decode_tokens_per_s"])
        entry["rf"].append(ours["decode_roofline_fraction"])
        entry["rl"].append(decode / ours["decode_roofline_tokens_per_s"])
        entry["lp"].append(prefill)
        entry["ld"].append(decode)
    print("| format | threads | prompt = depth | prefill megamoe / llama.cpp tok/s | ratio | "
          "decode megamoe / llama.cpp tok/s | ratio | decode / roofline, megamoe / llama.cpp | rounds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (dtype, threads, prompt), e in sorted(rows.items()):
        m = {k: statistics.median(v) for k, v in e.items()}
        print(f"| {dtype} | {threads} | {prompt} | {m['mp']:.1f} / {m['lp']:.1f} | {m['mp'] / m['lp']:.2f}x | "
              f"{m['md']:.2f} / {m['ld']:.2f} | {m['md'] / m['ld']:.2f}x | {100 * m['rf']:.0f}% / {100 * m['rl']:.0f}% | {len(e['mp'])} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out/bench-llama-cpp")
