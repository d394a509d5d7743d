"""Sampler demo: every rollout mode on an exactly solvable conditional Gaussian flow.

Prints, per mode, the number of samples, trained transitions, model evaluations (NFE) and how
closely the samples match the data distribution, and checks that replaying the transitions
reproduces their log-probs. Runs in seconds on CPU; the toy text-to-image demo replaces it as
the main job once the trainer lands.
"""

from __future__ import annotations

import argparse
import time

import torch

from flowrl.samplers import (
    ProgressiveWindow,
    RandomWindow,
    chain_rollout,
    linear_sigmas,
    replay_log_prob,
    singular_branch_rollout,
    tree_rollout,
)

SCALE = torch.tensor([0.5, 1.2, 0.8], dtype=torch.float64)


def velocity(x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Exact velocity for data N(cond, diag(SCALE²)): ``[B, 3]`` states, ``[B]`` sigmas, ``[B, 3]`` means."""
    s = sigma.to(x).reshape(-1, 1)
    var = (1 - s) ** 2 * SCALE**2 + s**2
    return -cond + (s - (1 - s) * SCALE**2) / var * (x - (1 - s) * cond)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64, help="number of conditions (prompt groups)")
    parser.add_argument("--group-size", type=int, default=16, help="samples per condition")
    parser.add_argument("--steps", type=int, default=16, help="denoising steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(args.seed)
    means = torch.randn(args.prompts, 3, generator=gen, dtype=torch.float64) * 2
    sigmas = linear_sigmas(args.steps, shift=3.0)
    g, p, t = args.group_size, args.prompts, args.steps
    chain_cond = means.repeat_interleave(g, 0)
    chain_gid = torch.arange(p).repeat_interleave(g)
    noise = torch.randn(p * g, 3, generator=gen, dtype=torch.float64)
    roots = torch.randn(p, 3, generator=gen, dtype=torch.float64)
    fast, mix = RandomWindow(t, 2, seed=args.seed), ProgressiveWindow(t, 4, stride=1, shift_interval=1)
    for _ in range(3):
        fast.advance()
        mix.advance()
    splits = tuple(range(0, 8, 2))[: max(1, round(torch.log2(torch.tensor(float(g))).item()))]
    modes = {
        "flow-grpo (all SDE)": (
            "flow_sde",
            chain_cond,
            lambda: chain_rollout(velocity, noise, sigmas, chain_cond, chain_gid, generator=gen),
        ),
        "flow-grpo-fast": (
            "flow_sde",
            chain_cond,
            lambda: chain_rollout(
                velocity, noise, sigmas, chain_cond, chain_gid, sde_mask=fast.sde_mask(), generator=gen
            ),
        ),
        "mixgrpo": (
            "flow_sde",
            chain_cond,
            lambda: chain_rollout(
                velocity, noise, sigmas, chain_cond, chain_gid, sde_mask=mix.sde_mask(), generator=gen
            ),
        ),
        "mixgrpo-flash": (
            "flow_sde",
            chain_cond,
            lambda: chain_rollout(
                velocity,
                noise,
                sigmas,
                chain_cond,
                chain_gid,
                sde_mask=mix.sde_mask(),
                tail_solver="dpm2m",
                tail_steps=3,
                generator=gen,
            ),
        ),
        "dance-sde": (
            "dance_sde",
            chain_cond,
            lambda: chain_rollout(
                velocity, noise, sigmas, chain_cond, chain_gid, kind="dance_sde", noise_level=0.3, generator=gen
            ),
        ),
        "cps": (
            "cps",
            chain_cond,
            lambda: chain_rollout(
                velocity, noise, sigmas, chain_cond, chain_gid, kind="cps", noise_level=0.7, generator=gen
            ),
        ),
        "branchgrpo (tree)": (
            "flow_sde",
            means,
            lambda: tree_rollout(
                velocity, roots, sigmas, means, torch.arange(p), split_steps=splits, branch_factor=2, generator=gen
            ),
        ),
        "branchgrpo-mix": (
            "flow_sde",
            means,
            lambda: tree_rollout(
                velocity,
                roots,
                sigmas,
                means,
                torch.arange(p),
                sde_mask=torch.zeros(t, dtype=torch.bool),
                split_steps=splits,
                branch_factor=2,
                generator=gen,
            ),
        ),
        "tempflow/g2rpo (branch)": (
            "flow_sde",
            means,
            lambda: singular_branch_rollout(
                velocity,
                roots,
                sigmas,
                means,
                torch.arange(p),
                branch_step=t // 2,
                num_children=g,
                extra_tail_steps=(1, 2),
                generator=gen,
            ),
        ),
    }
    header = f"{'mode':<26}{'samples':>8}{'trans.':>8}{'NFE':>8}{'NFE/smp':>9}{'|Δmean|':>9}{'std/true':>9}"
    print(header + f"{'replay Δlogp':>14}{'ms':>7}")
    for name, (kind, cond, run) in modes.items():
        start = time.perf_counter()
        out = run()
        ms = (time.perf_counter() - start) * 1e3
        target = cond[out.cond_index]
        resid = out.samples - target
        lp, _ = replay_log_prob(velocity, out.transitions, cond, kind)
        drift = (lp - out.transitions.log_prob).abs().max().item() if len(lp) else 0.0
        n = out.samples.shape[0]
        print(
            f"{name:<26}{n:>8}{len(out.transitions):>8}{out.nfe:>8}{out.nfe / n:>9.2f}"
            f"{resid.mean(0).abs().max().item():>9.3f}{(resid.std(0) / SCALE).mean().item():>9.3f}"
            f"{drift:>14.1e}{ms:>7.0f}"
        )


if __name__ == "__main__":
    main()
