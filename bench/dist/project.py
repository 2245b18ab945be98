"""Paper projection of one MoE layer's expert time against its exchange time on many machines
(docs/distributed.md), from the exchange's traffic (results to token owners with MPI_Alltoallv,
combined rows with MPI_Allgatherv) and each rank reading its experts' weights at memory speed.

    python3 bench/dist/project.py [--hidden 7168] [--expert-width 2048] [--top-k 8] [--weight-bytes 1]
        [--latency-us 5] [--bandwidth-gb-s 12.5] [--memory-gb-s 200]
"""
import argparse


def layer_times(ranks, tokens, a):
    """(expert seconds, exchange seconds) of one MoE layer on the busiest rank."""
    slots = tokens * a.top_k
    row_bytes = 8 + 4 * a.hidden  # slot id + fp32 row
    expert_bytes = 3 * a.hidden * a.expert_width * a.weight_bytes
    # Experts with tokens: at most slots, at most all; spread evenly (a balanced placement).
    active = min(slots, a.experts)
    experts_per_rank = -(-active // ranks)
    rows_per_rank = slots / ranks
    expert = experts_per_rank * expert_bytes / (a.memory_gb_s * 1e9) + \
        2 * rows_per_rank * 3 * a.hidden * a.expert_width / (a.flops_g * 1e9)
    # Pairwise exchanges: a latency per peer, then the bytes over one link.
    results_in = rows_per_rank * row_bytes * (ranks - 1) / ranks
    gathered = tokens * 4 * a.hidden * (ranks - 1) / ranks
    exchange = 2 * (ranks - 1) * a.latency_us * 1e-6 + (results_in + gathered) / (a.bandwidth_gb_s * 1e9)
    return expert, exchange


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hidden", type=int, default=7168)          # DeepSeek-V3
    p.add_argument("--expert-width", type=int, default=2048)
    p.add_argument("--experts", type=int, default=256)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--weight-bytes", type=float, default=1)      # FP8
    p.add_argument("--latency-us", type=float, default=5)        # per message (RDMA ~2-5, TCP ~20-50)
    p.add_argument("--bandwidth-gb-s", type=float, default=12.5)  # 100 Gb/s
    p.add_argument("--memory-gb-s", type=float, default=200)     # one server's memory bandwidth
    p.add_argument("--flops-g", type=float, default=2000)        # one server's fp32 GFLOP/s
    a = p.parse_args()
    print(f"| ranks | tokens per step | experts ms | exchange ms | exchange / experts |")
    print(f"|---:|---:|---:|---:|---:|")
    for tokens in (1, 32, 512):
        for ranks in (2, 8, 32, 128):
            expert, exchange = layer_times(ranks, tokens, a)
            print(f"| {ranks} | {tokens} | {1e3 * expert:.3f} | {1e3 * exchange:.3f} | {exchange / expert:.2f} |")


if __name__ == "__main__":
    main()
