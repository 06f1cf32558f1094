"""Train a small Hyena model whose long convolution is mlx_kernels' FFTConv (FlashFFTConv).

The task is a long-range copy: read a sequence of random tokens and, at every step t,
output the token seen ``delay`` steps earlier. Attention-free, the only way across the
gap is the Hyena operator's long convolution, which has to learn a filter with a spike at
lag ``delay``. With the defaults the loss drops from log(vocab) (chance) to about 0.1 and
nearly every token is copied within 60 steps; the script fails if under half are.

    python examples/hyena.py                      # on the GPU when torch sees one, else the CPU
    python examples/hyena.py --seq-len 1024 --delay 128 --steps 300   # a longer gap takes more steps
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import mlx_kernels


class HyenaBlockModel(nn.Module):
    """Embedding, one pre-norm residual Hyena block, and a head over the vocabulary."""

    def __init__(self, vocab: int, d_model: int, seq_len: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.hyena = mlx_kernels.HyenaOperator(d_model, seq_len)
        self.head = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, vocab))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        x = x + self.hyena(self.norm(x))
        return self.head(x)


def delayed_copy_batch(batch: int, seq_len: int, vocab: int, delay: int, generator: torch.Generator):
    """Random tokens and, as targets, the same tokens ``delay`` steps later (the first
    ``delay`` targets are -100: nothing to copy yet, ignored by the loss)."""
    tokens = torch.randint(vocab, (batch, seq_len), generator=generator)
    targets = torch.full_like(tokens, -100)
    targets[:, delay:] = tokens[:, :-delay]
    return tokens, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--delay", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() and mlx_kernels.WITH_CUDA else "cpu")
    args = parser.parse_args()
    if not 0 < args.delay < args.seq_len:
        parser.error(f"--delay must be in [1, --seq-len), got {args.delay}")

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = HyenaBlockModel(args.vocab, args.d_model, args.seq_len).to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    print(f"{args.device}: vocab {args.vocab}, copy across {args.delay} of {args.seq_len} steps; "
          f"chance loss {math.log(args.vocab):.3f}")
    for step in range(1, args.steps + 1):
        tokens, targets = (t.to(args.device) for t in delayed_copy_batch(
            args.batch, args.seq_len, args.vocab, args.delay, generator))
        logits = model(tokens)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 1 or step % 10 == 0 or step == args.steps:
            copied = targets != -100
            accuracy = (logits.argmax(-1)[copied] == targets[copied]).float().mean().item()
            print(f"step {step:4d}  loss {loss.item():.4f}  accuracy {accuracy:.2f}")
    if accuracy < 0.5:
        raise SystemExit(f"copied only {accuracy:.0%} of the tokens after {args.steps} steps "
                         f"(chance: {1 / args.vocab:.0%}): train longer (--steps)")


if __name__ == "__main__":
    main()
