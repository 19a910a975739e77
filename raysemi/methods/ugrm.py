"""UCC's unsupervised loss: cross-head supervision re-weighted by UGRM (paper Eq. 7-12).

Two heads see the same unlabeled image. Head m's weak view gives the softmax p_m^W, its pseudo
label q_m = argmax_c p_m^W and its confidence w_m = max_c p_m^W (Eq. 7). Head 1's label supervises
head 2's strong view and vice versa (Eq. 3):

    L_u = L(q1 -> head 2) + L(q2 -> head 1),   L(q_m -> peer) = sum_j u_m,j CE(q_m,j, p_peer,j^S) / sum_j u_m,j

with the UGRM weight u_m = w_m * 1_m (Eq. 8, 11). The indicator 1_m has two readings:

- "text" (the default): u_m = w_m * 1[w_m > w_peer]. A head's pseudo label counts where that head
  is MORE confident than its peer. This is what the paper's prose says right below Eq. 9-10:
  "1_ij = 1 represents that if the current head's prediction confidence of j-th pixel in the i-th
  image is higher compared with others, then it is equal to 1; otherwise, 1_ij will be 0. It is
  sensible that the confidence of pseudo label should be used as a supervision signal when it is
  reliable. Otherwise, it should be discarded during the training process." The abstract agrees:
  UGRM works "by suppressing the effect of the low-quality pseudo labels from its peer".
- "equations": u_m = w_m * 1[w_m < w_peer], the indicator exactly as printed in Eq. 9-10
  ("u_1^2 = 1, w_2 > w_1"; u_1 weights CE(q_1, p_2^S) in Eq. 12), i.e. a label is used where its
  own head is the LESS confident one. Kept as an ablation switch.

Both readings use the paper's strict ">": at a tie neither head is more confident, so neither
pseudo label is used at that pixel.

Normalisation: each term is one weighted mean over the whole batch, sum(u * ce) / sum(u). Eq. 12
normalises per image (and prints an extra 1/WH); the batch form is what DESIGN.md §1 asks for and
reduces to torch's mean cross-entropy when every weight is 1 (ugrm=False).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

READINGS = ("text", "equations")


def ugrm_weights(conf_self: Tensor, conf_peer: Tensor, reading: str = "text") -> Tensor:
    """UGRM weight u = w_self * indicator (Eq. 8-11), float B x H x W.

    conf_self, conf_peer: B x H x W confidences w = max_c p^W of the head whose pseudo label is
    weighted and of its peer. reading "text": indicator 1[w_self > w_peer]; "equations":
    1[w_self < w_peer]. Ties give 0 in both readings.
    """
    if reading not in READINGS:
        raise ValueError(f"reading must be one of {READINGS}, got {reading!r}")
    if conf_self.shape != conf_peer.shape:
        raise ValueError(f"confidence shapes differ: {tuple(conf_self.shape)} vs {tuple(conf_peer.shape)}")
    conf_self = conf_self.float()
    conf_peer = conf_peer.float()
    more_confident = conf_self > conf_peer if reading == "text" else conf_self < conf_peer
    return conf_self * more_confident.to(conf_self.dtype)


def _weighted_mean(per_pixel: Tensor, weight: Tensor) -> Tensor:
    # per_pixel carries the graph; weight does not. When every weight is 0 the numerator is an
    # exact 0 that still has a grad_fn; dividing by 1 then (not by 0) avoids NaN values and grads.
    total = weight.sum()
    denom = torch.where(total > 0, total, torch.ones_like(total))
    return (per_pixel * weight).sum() / denom


def cross_supervision_loss(
    logits_s1: Tensor,
    logits_s2: Tensor,
    probs_w1: Tensor,
    probs_w2: Tensor,
    ignore_mask: Tensor | None = None,
    ugrm: bool = True,
    reading: str = "text",
    ignore_index: int = 255,
    pasted_labels: Tensor | None = None,
    pixel_weight: Tensor | None = None,
    class_weight: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """UCC's unsupervised loss L_u = L(q1 -> head 2) + L(q2 -> head 1); returns (loss, stats).

    logits_s1, logits_s2: B x C x H x W logits of head 1 / head 2 on their strong views (with grad).
    probs_w1, probs_w2: B x C x H x W softmax of head 1 / head 2 on the weak view. They only give
        targets and weights, so they are detached here: no gradient flows into them.
    ignore_mask: bool B x H x W, True where a pixel does not count (e.g. padding of the weak view).
    ugrm: False gives every counted pixel weight 1 (a plain mean cross-entropy per term).
    reading: "text" (default) or "equations", see the module docstring.
    pasted_labels: optional long B x H x W, the ground-truth class DCSCP pasted at a pixel and
        ignore_index elsewhere. Where set, both terms use that label with weight 1 instead of the
        weak-view pseudo labels and their UGRM weights (the weak view never saw the pasted object;
        its label is certain). It overrides ignore_mask there (the pasted pixel is real content).
        Build it with dcscp_batch(..., pseudo_targets=torch.full((B, H, W), ignore_index)).
    pixel_weight: optional float B x H x W multiplying both terms' weights (RWMS-guided UCC: the teacher
        pair's rank weight a * exp(-b (x - 1)), 0 on padding); pasted pixels keep their weight 1.
    class_weight: optional float C, a weight per class multiplying each term's weight by its own target's
        class (q1's for the term that supervises head 2, q2's for head 1; ucc.class_balance); pasted
        pixels keep their weight 1.

    stats (detached scalars): u_mean_1 / u_mean_2, the mean weight of each term over counted
    pixels, and used_1 / used_2, the fraction of counted pixels whose weight is > 0.
    Each term is an exact 0 with a grad_fn when all its weights are 0.
    """
    if not (logits_s1.shape == logits_s2.shape == probs_w1.shape == probs_w2.shape) or logits_s1.dim() != 4:
        raise ValueError(
            "logits_s1, logits_s2, probs_w1, probs_w2 must all be B x C x H x W of one shape, got "
            f"{[tuple(t.shape) for t in (logits_s1, logits_s2, probs_w1, probs_w2)]}"
        )
    probs_w1 = probs_w1.detach()
    probs_w2 = probs_w2.detach()
    w1, q1 = probs_w1.max(dim=1)  # Eq. 7 and Eq. 2
    w2, q2 = probs_w2.max(dim=1)

    if ugrm:
        u1 = ugrm_weights(w1, w2, reading)  # weights q1's term (it supervises head 2)
        u2 = ugrm_weights(w2, w1, reading)
    else:
        if reading not in READINGS:
            raise ValueError(f"reading must be one of {READINGS}, got {reading!r}")
        u1 = torch.ones_like(w1, dtype=torch.float32)
        u2 = torch.ones_like(w2, dtype=torch.float32)

    counted = torch.ones_like(q1, dtype=torch.bool)
    if ignore_mask is not None:
        if ignore_mask.shape != q1.shape:
            raise ValueError(f"ignore_mask must be B x H x W {tuple(q1.shape)}, got {tuple(ignore_mask.shape)}")
        counted = ~ignore_mask.bool()
    if pixel_weight is not None:
        if pixel_weight.shape != q1.shape:
            raise ValueError(f"pixel_weight must be B x H x W {tuple(q1.shape)}, got {tuple(pixel_weight.shape)}")
        u1 = u1 * pixel_weight.float()
        u2 = u2 * pixel_weight.float()
    if class_weight is not None:
        if class_weight.shape != (probs_w1.shape[1],):
            raise ValueError(f"class_weight must hold one weight per class ({probs_w1.shape[1]}), "
                             f"got {tuple(class_weight.shape)}")
        class_weight = class_weight.to(u1.device, torch.float32)
        u1 = u1 * class_weight[q1]
        u2 = u2 * class_weight[q2]
    if pasted_labels is not None:
        if pasted_labels.shape != q1.shape:
            raise ValueError(
                f"pasted_labels must be B x H x W {tuple(q1.shape)}, got {tuple(pasted_labels.shape)}")
        pasted = pasted_labels != ignore_index
        pasted_long = pasted_labels.long()
        q1 = torch.where(pasted, pasted_long, q1)
        q2 = torch.where(pasted, pasted_long, q2)
        u1 = torch.where(pasted, torch.ones_like(u1), u1)
        u2 = torch.where(pasted, torch.ones_like(u2), u2)
        counted = counted | pasted

    u1 = u1 * counted
    u2 = u2 * counted
    # pixels that do not count get the ignore target, so CE is 0 there rather than merely weighted 0
    q1 = q1.masked_fill(~counted, ignore_index)
    q2 = q2.masked_fill(~counted, ignore_index)

    ce_2 = F.cross_entropy(logits_s2, q1, ignore_index=ignore_index, reduction="none")  # q1 -> head 2
    ce_1 = F.cross_entropy(logits_s1, q2, ignore_index=ignore_index, reduction="none")  # q2 -> head 1
    loss = _weighted_mean(ce_2, u1.to(ce_2.dtype)) + _weighted_mean(ce_1, u2.to(ce_1.dtype))

    with torch.no_grad():
        n = counted.sum().clamp(min=1).float()
        stats = {
            "u_mean_1": u1.sum() / n,
            "u_mean_2": u2.sum() / n,
            "used_1": (u1 > 0).sum() / n,
            "used_2": (u2 > 0).sum() / n,
        }
    return loss, stats
