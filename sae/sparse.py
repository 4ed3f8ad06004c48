"""Sparse TopK encode and decode for training: work in proportion to k, not to d_sae.

Why: a TopK SAE's code has k non-zeros out of d_sae (32–100 of 32 768). The dense way —
scatter the top-k into a `[batch, d_sae]` code, multiply by W_dec, and back-propagate through
both dense products — spends five of its six large matrix products on zeros. Here only the
encoder's forward product is dense (every pre-activation is needed to pick the top k):
- decode is a gather-and-sum of k decoder rows per sample (`embedding_bag` with per-sample
  weights), whose backward touches only those rows;
- the encoder's backward (`TopKEncode`) sends the k gradients per sample back through the k
  chosen encoder columns, with `embedding_bag` for the input gradient and its backward for
  the weight gradient (a row-sorted accumulation; the `[batch, k, d_in]` outer products are
  never materialised, so memory stays bounded at any batch size).
The dense path stays in `sae.train` as the reference (and for BatchTopK, whose per-row count
varies); tests check that values and gradients agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class TopKEncode(torch.autograd.Function):
    """`values, indices = topk(relu(x_c @ W_enc + b_enc), k)` with a sparse backward.

    `extra` optionally selects more latents per row (AuxK's dead latents): a mask `[d_sae]`
    and a count; their values are returned too, and their gradients flow back the same way.
    """

    @staticmethod
    def forward(ctx, x_c, w_enc, b_enc, k: int, extra_mask, extra_k: int):
        pre = torch.addmm(b_enc, x_c, w_enc)
        values, indices = pre.topk(k, dim=-1, sorted=False)
        values = values.relu_()  # relu after the selection: the same values, one pass over k not d_sae
        if extra_k:
            pre = pre.relu_()
            masked = torch.where(extra_mask, pre, torch.zeros((), dtype=pre.dtype, device=pre.device))
            extra_values, extra_indices = masked.topk(extra_k, dim=-1, sorted=False)
        else:
            extra_values = extra_indices = pre.new_zeros((pre.shape[0], 0)).long()
            extra_values = extra_values.to(pre.dtype)
        ctx.save_for_backward(
            x_c, w_enc, torch.cat([indices, extra_indices], dim=1), torch.cat([values, extra_values], dim=1) > 0
        )
        ctx.mark_non_differentiable(indices, extra_indices)
        return values, indices, extra_values, extra_indices

    @staticmethod
    def backward(ctx, grad_values, _grad_indices, grad_extra, _grad_extra_indices):
        x_c, w_enc, indices, positive = ctx.saved_tensors
        # relu: a selected value of 0 passes no gradient (selected only because fewer were > 0)
        grad = torch.cat([grad_values, grad_extra], dim=1) * positive
        grad_x = grad_w = grad_b = None
        w_rows = w_enc.t()  # [d_sae, d_in]: the chosen latents' encoder directions
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(indices, w_rows.contiguous(), mode="sum", per_sample_weights=grad.to(w_rows.dtype))
        if ctx.needs_input_grad[1]:
            # Row j gathers Σ g[b, i]·x_c[b] over the (b, i) that chose j: exactly the weight
            # gradient of an embedding_bag with per-sample weights g and output gradient x_c.
            with torch.enable_grad():
                rows = torch.zeros(w_rows.shape, dtype=w_rows.dtype, device=w_rows.device, requires_grad=True)
                bags = F.embedding_bag(indices, rows, mode="sum", per_sample_weights=grad.to(rows.dtype))
                (grad_rows,) = torch.autograd.grad(bags, rows, grad_outputs=x_c.to(rows.dtype))
            grad_w = grad_rows.t()
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(w_enc.shape[1], dtype=w_enc.dtype, device=grad.device)  # fp32 sums under autocast
            grad_b.index_add_(0, indices.flatten(), grad.flatten().to(w_enc.dtype))
        return grad_x, grad_w, grad_b, None, None, None


def topk_encode(x_c, w_enc, b_enc, k: int, extra_mask=None, extra_k: int = 0):
    """See `TopKEncode`; `x_c` is the input minus b_dec."""
    return TopKEncode.apply(x_c, w_enc, b_enc, k, extra_mask, extra_k)


def sparse_decode(indices: torch.Tensor, values: torch.Tensor, w_dec: torch.Tensor) -> torch.Tensor:
    """Σ_j values[:, j] · W_dec[indices[:, j]]: `[batch, d_in]` without a dense code."""
    return F.embedding_bag(indices, w_dec, mode="sum", per_sample_weights=values.to(w_dec.dtype))
