"""A tabular policy trained with the sampled J-BOND loss on an enumerable toy (docs/algorithm.md section 3).

What the paper claims and this checks: each update moves pi toward Best-of-2 of the anchor, and the EMA
anchor, chasing pi, walks through iterated Best-of-2: it is nearest Bo-2^M of the reference for a
growing M, while KL(pi || pi_ref) rises smoothly.
"""

import torch

from bond.anchor import ema_update_
from bond.bon import bon_probs, kl_divergence
from bond.objective import best_index, jbond_loss
from tests.unit.test_tabular_bond import toy


def train(steps: int = 200, k: int = 12, batch: int = 128, seed: int = 0):
    g, ref, rewards, logits = toy(k, seed)
    anchor = torch.log(ref).clone()
    opt = torch.optim.Adam([logits], lr=0.03)
    history = []
    for step in range(steps + 1):
        pi, pa = torch.softmax(logits.detach(), -1), torch.softmax(anchor, -1)
        if step % 25 == 0:
            to_bo2m = [kl_divergence(pa, bon_probs(ref, rewards, 2**m)).item() for m in range(8)]
            history.append(
                {
                    "kl_pi_bo2_anchor": kl_divergence(pi, bon_probs(pa, rewards, 2)).item(),
                    "kl_pi_ref": kl_divergence(pi, ref).item(),
                    "anchor_m": min(range(8), key=to_bo2m.__getitem__),
                    "anchor_reward": (pa * rewards).sum().item(),
                }
            )
        y = torch.multinomial(pi, batch, replacement=True, generator=g)
        ya = torch.multinomial(pa, 2 * batch, replacement=True, generator=g).view(batch, 2)
        logp = torch.log_softmax(logits, -1)
        best = ya[torch.arange(batch), best_index(rewards[ya])]
        loss, _ = jbond_loss(logp[y], torch.log(pa)[y], logp[best], rewards[y], rewards[ya], beta=0.5, gamma=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_update_([anchor], [logits.detach()], eta=0.05)
    return history


def test_policy_moves_toward_best_of_2_of_the_anchor():
    h = train()
    assert h[1]["kl_pi_bo2_anchor"] < 0.5 * h[0]["kl_pi_bo2_anchor"]
    assert h[-1]["kl_pi_bo2_anchor"] < 0.2 * h[0]["kl_pi_bo2_anchor"]


def test_ema_anchor_walks_through_iterated_best_of_2():
    h = train()
    ms = [row["anchor_m"] for row in h]
    assert ms == sorted(ms), f"anchor's nearest Bo-2^M should only grow, got {ms}"
    assert ms[-1] >= 3
    kls = [row["kl_pi_ref"] for row in h]
    assert all(b > a for a, b in zip(kls, kls[1:], strict=False)), f"KL(pi||ref) should rise smoothly: {kls}"
    rewards = [row["anchor_reward"] for row in h]
    assert rewards[-1] > rewards[0] + 0.5
