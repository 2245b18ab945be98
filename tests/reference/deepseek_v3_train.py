"""Independent PyTorch training reference for DeepSeek-V2/V3 (docs/models.md#2-deepseek-v2v3, and megamoe's
training recipe as docs/training.md states it).

The forward pass is the inference reference's (deepseek_v3.py: norms, gate variants, experts)
with its weights turned into autograd parameters and attention taken over a batch, so autograd
gives the exact gradients of the same function: the top-k choice has none, the chosen experts and,
through the combine weights, the scores and the gate receive them. An expert pool's tensors are
one parameter each (named once in the checkpoint), so autograd sums every layer's gradient into
them and AdamW steps them once. Training: mean next-token cross-entropy, torch.optim.AdamW
(decay on matrices only, router biases frozen), clip_grad_norm_, linear warmup then cosine decay,
batches read as consecutive windows.

Optionally an auxiliary balancing loss of every MoE layer is added (docs/models.md#4-mega-moe-extensions):
"aux-loss" (Switch, over the batch) or "seq-aux-loss" (DeepSeek-V3, per sequence, averaged).

    /usr/bin/python3 tests/reference/deepseek_v3_train.py gradients --model DIR --tokens 1,2,... \
        --sequences B --output FILE.npz
    /usr/bin/python3 tests/reference/deepseek_v3_train.py train --model DIR --tokens TOKENS.safetensors \
        --steps N --seq-len T --batch-size B --lr X --warmup-steps W [--dtype float32] [--threads N]
"""
import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

import safetensors_np
from deepseek_v3 import DeepseekV3Reference, apply_rope

BIAS_SUFFIX = "e_score_correction_bias"


class TrainingReference(DeepseekV3Reference):
    """DeepseekV3Reference whose weights are parameters of `dtype`, over batches [B, T]."""

    def __init__(self, model_dir, dtype=torch.float64, balance="none", alpha=0.0):
        super().__init__(model_dir)
        self.dtype = dtype
        self.balance, self.alpha = balance, alpha
        names = [n for n in self.checkpoint.entries if not n.endswith(safetensors_np.SCALE_SUFFIX)]
        self.params = {n: torch.nn.Parameter(self.checkpoint.tensor(n).to(dtype),
                                             requires_grad=not n.endswith(BIAS_SUFFIX))
                       for n in names}
        self.freqs = self.freqs.to(dtype)

    def weight(self, name):
        return self.params[name]

    def attention(self, layer, x):
        """Naive MLA over x [B, T, D] (normalized), every sequence from position 0."""
        c = self.config
        heads, dn, dr, dv = (c["num_attention_heads"], c["qk_nope_head_dim"],
                             c["qk_rope_head_dim"], c["v_head_dim"])
        p = f"model.layers.{layer}.self_attn."
        B, T, _ = x.shape
        positions = torch.arange(T, dtype=self.dtype)
        if c.get("q_lora_rank") is None:
            q = self.linear(x, p + "q_proj.weight")
        else:
            q = self.linear(self.norm(self.linear(x, p + "q_a_proj.weight"), p + "q_a_layernorm.weight"),
                            p + "q_b_proj.weight")
        q_nope, q_pe = q.view(B, T, heads, dn + dr).split([dn, dr], dim=-1)
        q_pe = apply_rope(q_pe, positions, self.freqs, self.rope_scale)
        latent, k_pe = self.linear(x, p + "kv_a_proj_with_mqa.weight").split([c["kv_lora_rank"], dr], dim=-1)
        k_pe = apply_rope(k_pe.view(B, T, 1, dr), positions, self.freqs, self.rope_scale)[:, :, 0]
        kv = self.linear(self.norm(latent, p + "kv_a_layernorm.weight"), p + "kv_b_proj.weight")
        k_nope, v = kv.view(B, T, heads, dn + dv).split([dn, dv], dim=-1)
        scores = (torch.einsum("bthd,bshd->bhts", q_nope, k_nope) +
                  torch.einsum("bthd,bsd->bhts", q_pe, k_pe)) * ((dn + dr) ** -0.5 * self.softmax_mscale)
        future = torch.ones(T, T, dtype=torch.bool).triu(1)
        probs = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        out = torch.einsum("bhts,bshd->bthd", probs, v).reshape(B, T, heads * dv)
        return self.linear(out, p + "o_proj.weight")

    def balance_loss(self, layer, x, sequences):
        """The auxiliary balancing loss of MoE layer `layer` over x [B*T, D], from docs/models.md#4-mega-moe-extensions:
        over a group of G tokens (the batch for aux-loss, each sequence for seq-aux-loss),
        f_i = E/(k*G) * count_i, P_i = mean of the scores normalized to sum 1 over the experts,
        alpha * sum_i f_i * P_i, averaged over the groups. f (the top-k choice) has no gradient."""
        c = self.config
        E, k = c["n_routed_experts"], c["num_experts_per_tok"]
        logits = self.linear(x, f"model.layers.{layer}.mlp.gate.weight")
        scores = logits.sigmoid() if c["scoring_func"] == "sigmoid" else logits.softmax(dim=-1)
        _, experts = self.route(layer, x)
        groups = sequences if self.balance == "seq-aux-loss" else 1
        G = x.shape[0] // groups
        counts = F.one_hot(experts, E).sum(dim=1).reshape(groups, G, E).sum(dim=1).to(self.dtype)
        f = E * counts / (k * G)
        P = (scores / scores.sum(dim=-1, keepdim=True)).reshape(groups, G, E).mean(dim=1)
        return self.alpha * (f * P).sum(dim=-1).mean()

    def losses(self, rows):
        """(mean cross-entropy, auxiliary loss summed over the MoE layers) of rows [B, T+1]:
        inputs rows[:, :-1], targets rows[:, 1:]."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        inputs, targets = rows[:, :-1], rows[:, 1:]
        B, T = inputs.shape
        h = self.weight("model.embed_tokens.weight")[inputs]
        aux = torch.zeros((), dtype=self.dtype)
        for layer in range(self.config["num_hidden_layers"]):
            p = f"model.layers.{layer}."
            h = h + self.attention(layer, self.norm(h, p + "input_layernorm.weight"))
            x = self.norm(h, p + "post_attention_layernorm.weight").reshape(B * T, -1)
            h = h + self.ffn(layer, x).reshape(B, T, -1)
            if self.balance != "none" and layer in self.expert_owners:  # the MoE layers
                aux = aux + self.balance_loss(layer, x, B)
        head = "lm_head.weight" if "lm_head.weight" in self.params else "model.embed_tokens.weight"
        logits = self.linear(self.norm(h, "model.norm.weight"), head)
        return F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(-1)), aux

    def loss(self, rows):
        """The training loss of rows [B, T+1]: cross-entropy plus the auxiliary loss."""
        cross_entropy, aux = self.losses(rows)
        return cross_entropy + aux

    def gradients(self, rows):
        """(loss, {name: gradient as float64 numpy}); frozen and unused tensors get zeros."""
        for param in self.params.values():
            param.grad = None
        loss = self.loss(rows)
        loss.backward()
        return float(loss), {n: (p.grad if p.grad is not None else torch.zeros_like(p)).double().numpy()
                             for n, p in self.params.items()}


def learning_rate(step, peak, warmup, total, min_ratio):
    """Linear warmup to `peak` over `warmup` steps, then a cosine to peak * min_ratio at the last step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    decay_steps = total - warmup
    if decay_steps <= 1:
        return peak
    progress = min(1.0, (step - warmup) / (decay_steps - 1))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def training_windows(tokens, seq_len, val_fraction):
    """The training part of the token stream (the last val_fraction, at least one window, validates)."""
    n, window = len(tokens), seq_len + 1
    validation = max(window, math.ceil(val_fraction * n)) if val_fraction > 0 else 0
    train = tokens[:n - validation]
    return train, (len(train) - 1) // seq_len


def read_batch(train, windows, seq_len, first, count):
    """Windows first, first+1, ... (mod windows) of seq_len + 1 tokens every seq_len tokens."""
    return np.stack([train[(first + r) % windows * seq_len:][:seq_len + 1] for r in range(count)])


def train(model, tokens, steps, seq_len, batch_size, lr, warmup, min_lr_ratio=0.1, weight_decay=0.1,
          grad_clip=1.0, val_fraction=0.1, betas=(0.9, 0.95), eps=1e-8, on_step=None):
    """Runs `steps` AdamW steps from the model's weights; returns the losses."""
    params = [p for p in model.params.values() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() == 2], "weight_decay": weight_decay},
         {"params": [p for p in params if p.dim() != 2], "weight_decay": 0.0}],
        lr=lr, betas=betas, eps=eps)
    train_tokens, windows = training_windows(tokens, seq_len, val_fraction)
    losses = []
    for step in range(steps):
        start = time.perf_counter()
        rows = read_batch(train_tokens, windows, seq_len, step * batch_size, batch_size)
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(rows)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, lr, warmup, steps, min_lr_ratio)
        optimizer.step()
        losses.append(float(loss))
        if on_step:
            on_step(step, float(loss), time.perf_counter() - start)
    return losses


def read_tokens(path):
    header, _, offset = safetensors_np.read_header(path)
    begin, end = header["tokens"]["data_offsets"]
    return np.fromfile(path, dtype="<i4", count=(end - begin) // 4, offset=offset + begin)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    grads = commands.add_parser("gradients", help="loss and gradients of token rows (float64)")
    grads.add_argument("--model", required=True)
    grads.add_argument("--tokens", required=True, help="comma separated ids, --sequences rows of T + 1")
    grads.add_argument("--sequences", type=int, default=1)
    grads.add_argument("--output", required=True, help=".npz with the gradients and 'loss'")
    grads.add_argument("--balance", choices=("none", "aux-loss", "seq-aux-loss"), default="none")
    grads.add_argument("--balance-alpha", type=float, default=0.0)
    run = commands.add_parser("train", help="train and print one JSON line per step")
    run.add_argument("--model", required=True, help="initial weights (a model directory)")
    run.add_argument("--tokens", required=True, help="megamoe's token file (<output>.data/tokens.safetensors)")
    for flag, kind in (("--steps", int), ("--seq-len", int), ("--batch-size", int), ("--lr", float),
                       ("--warmup-steps", int)):
        run.add_argument(flag, type=kind, required=True)
    run.add_argument("--val-fraction", type=float, default=0.1)
    run.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    run.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.command == "gradients":
        rows = np.array([int(t) for t in args.tokens.split(",")]).reshape(args.sequences, -1)
        loss, gradients = TrainingReference(args.model, balance=args.balance, alpha=args.balance_alpha).gradients(rows)
        np.savez(args.output, loss=loss, **gradients)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    model = TrainingReference(args.model, getattr(torch, args.dtype))
    tokens_per_step = args.batch_size * args.seq_len

    def report(step, loss, seconds):
        print(json.dumps({"step": step + 1, "loss": loss, "tokens_per_s": tokens_per_step / seconds}), flush=True)

    train(model, read_tokens(args.tokens), args.steps, args.seq_len, args.batch_size, args.lr,
          args.warmup_steps, val_fraction=args.val_fraction, on_step=report)


if __name__ == "__main__":
    main()
