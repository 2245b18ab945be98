"""Times a prefill of the PyTorch reference (tests/reference/deepseek_v3.py) on a megamoe model
directory, the yardstick of docs/performance.md's prefill figure: the reference's float64 maths
run in float32 or bfloat16, the weights dequantized once before timing, the same thread count as
megamoe. Prints one JSON object with the median tokens/s of --runs runs.

    /usr/bin/python3 bench/model/torch_prefill.py --model DIR --prompt-tokens 512 --threads 2 --dtype float32
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "reference"))
import deepseek_v3  # noqa: E402


class TimedReference(deepseek_v3.DeepseekV3Reference):
    """The reference with its weights dequantized once, kept in `dtype`."""

    def __init__(self, model_dir, dtype):
        super().__init__(model_dir)
        self.dtype = dtype
        self.weights = {}

    def weight(self, name):
        if name not in self.weights:
            self.weights[name] = self.checkpoint.tensor(name).to(self.dtype)
        return self.weights[name]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    rope = deepseek_v3.apply_rope  # the reference ropes in float64: keep the result in `dtype`
    deepseek_v3.apply_rope = lambda *a: rope(*a).to(dtype)
    reference = TimedReference(args.model, dtype)
    vocab = reference.config["vocab_size"]
    tokens = [(7919 * i + 13) % vocab for i in range(args.prompt_tokens)]
    rates = []
    with torch.no_grad():
        reference.logits(tokens)  # warm-up: dequantizes and caches the weights it meets
        for _ in range(args.runs):
            start = time.perf_counter()
            reference.logits(tokens)
            rates.append(args.prompt_tokens / (time.perf_counter() - start))
    print(json.dumps({"model": args.model, "dtype": args.dtype, "threads": args.threads,
                      "prompt_tokens": args.prompt_tokens, "runs": args.runs,
                      "prefill_tokens_per_s": statistics.median(rates)}, indent=2))


if __name__ == "__main__":
    main()
