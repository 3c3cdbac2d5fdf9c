"""A tabular policy trained with the sampled BOND loss on an enumerable toy (docs/algorithm.md section 2).

BOND-N distils Best-of-n of the frozen reference: KL(pi || Bo-n(ref)) falls to near zero. Iterated BOND
distils Best-of-n of an anchor that is replaced by the policy every `copy_every` steps: after M copies the
anchor is nearest Bo-n^M of the reference, a target BOND-N alone never reaches.
"""

import torch

from bond.bon import bon_probs, kl_divergence
from bond.objective import best_index, bond_jeffreys_loss

N, K_QUANTILE = 4, 16


def toy(k: int, seed: int):
    """The toy: a random reference distribution and rewards over k outcomes, policy logits starting at the
    reference, and the generator that drew them (the training draws its samples from it too)."""
    g = torch.Generator().manual_seed(seed)
    ref = torch.softmax(torch.randn(k, generator=g, dtype=torch.float64), -1)
    rewards = torch.randn(k, generator=g, dtype=torch.float64)
    return g, ref, rewards, torch.log(ref).clone().requires_grad_(True)


def train(steps: int, copy_every: int = 0, k: int = 10, batch: int = 128, seed: int = 0):
    """copy_every = 0: BOND against the frozen reference; > 0: iterated BOND with periodic anchor copies."""
    g, ref, rewards, logits = toy(k, seed)
    target = torch.log(ref).clone()
    opt = torch.optim.Adam([logits], lr=0.05)
    for step in range(1, steps + 1):
        pi, pt = torch.softmax(logits.detach(), -1), torch.softmax(target, -1)
        y = torch.multinomial(pi, batch, replacement=True, generator=g)
        yt = torch.multinomial(pt, batch * K_QUANTILE, replacement=True, generator=g).view(batch, K_QUANTILE)
        best = yt[torch.arange(batch), best_index(rewards[yt][:, :N])]
        logp = torch.log_softmax(logits, -1)
        loss, _ = bond_jeffreys_loss(logp[y], torch.log(pt)[y], logp[best], rewards[y], rewards[yt], N, beta=0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if copy_every and step % copy_every == 0:
            target = logits.detach().clone()
    return ref, rewards, torch.softmax(logits.detach(), -1), torch.softmax(target, -1)


def nearest_power(p, ref, rewards) -> int:
    kls = [kl_divergence(p, bon_probs(ref, rewards, N**m)).item() for m in range(5)]
    return min(range(5), key=kls.__getitem__)


def test_bond_distils_best_of_n_of_the_reference():
    ref, rewards, pi, _ = train(steps=150)
    start = kl_divergence(ref, bon_probs(ref, rewards, N)).item()
    assert kl_divergence(pi, bon_probs(ref, rewards, N)).item() < 0.1 * start
    assert nearest_power(pi, ref, rewards) == 1


def test_iterated_bond_reaches_best_of_n_to_the_m():
    ref, rewards, pi, anchor = train(steps=450, copy_every=150)
    assert nearest_power(anchor, ref, rewards) >= 2  # three copies: anchor ~ Bo-4^2 or beyond, pi one further
    assert nearest_power(pi, ref, rewards) >= 3
    assert (pi * rewards).sum() > (bon_probs(ref, rewards, N) * rewards).sum()
