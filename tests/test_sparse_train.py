"""The sparse TopK path (sae.sparse) against the dense reference: values and gradients."""

from __future__ import annotations

import pytest
import torch
from planted import planted_dictionary, planted_store

from sae.sparse import sparse_decode, topk_encode
from sae.store import ActivationStore
from sae.train import TrainConfig, Trainer


def dense_reference(x_c, w_enc, b_enc, w_dec, k, dead, aux_k):
    pre = torch.relu(x_c @ w_enc + b_enc)
    values, indices = pre.topk(k, dim=-1)
    x_hat = torch.zeros_like(pre).scatter(-1, indices, values) @ w_dec
    aux_values, aux_indices = torch.where(dead, pre, torch.zeros_like(pre)).topk(aux_k, dim=-1)
    aux_hat = torch.zeros_like(pre).scatter(-1, aux_indices, aux_values) @ w_dec
    return x_hat, aux_hat


@pytest.mark.parametrize("aux_k", [0, 6])
def test_sparse_encode_and_decode_match_the_dense_reference(aux_k):
    torch.manual_seed(0)
    rows, d, m, k = 300, 16, 96, 5
    x = torch.randn(rows, d, dtype=torch.float64)
    weights = [torch.randn(d, m, dtype=torch.float64) / 4, torch.randn(m, dtype=torch.float64) / 4,
               torch.randn(m, d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)]  # fmt: skip
    dead = torch.rand(m) < 0.3
    target = torch.randn(rows, d, dtype=torch.float64)
    grads = []
    for path in ("sparse", "dense"):
        w_enc, b_enc, w_dec, b_dec = (w.clone().requires_grad_(True) for w in weights)
        x_c = x - b_dec
        if path == "sparse":
            values, indices, aux_values, aux_indices = topk_encode(x_c, w_enc, b_enc, k, dead, aux_k)
            x_hat = sparse_decode(indices, values, w_dec)
            aux_hat = sparse_decode(aux_indices, aux_values, w_dec) if aux_k else torch.zeros_like(x_hat)
        else:
            x_hat, aux_hat = dense_reference(x_c, w_enc, b_enc, w_dec, k, dead, max(aux_k, 1))
            aux_hat = aux_hat if aux_k else torch.zeros_like(x_hat)
        loss = (x_hat + b_dec - target).pow(2).sum() + (aux_hat - target).pow(3).sum()
        loss.backward()
        grads.append((x_hat.detach(), aux_hat.detach(), [w.grad for w in (w_enc, b_enc, w_dec, b_dec)]))
    (s_hat, s_aux, s_grads), (d_hat, d_aux, d_grads) = grads
    torch.testing.assert_close(s_hat, d_hat)
    torch.testing.assert_close(s_aux, d_aux)
    for name, a, b in zip(("W_enc", "b_enc", "W_dec", "b_dec"), s_grads, d_grads, strict=True):
        torch.testing.assert_close(a, b, msg=f"gradient of {name}")


def test_a_selected_zero_passes_no_gradient():
    """With fewer than k positive pre-activations, the extra picks are zeros (ReLU'd) and, as
    in the dense path, pass no gradient to the encoder."""
    x_c = torch.tensor([[1.0, 0.0]])
    w_enc = torch.tensor([[1.0, -1.0, -2.0], [0.0, 0.0, 0.0]], requires_grad=True)
    b_enc = torch.zeros(3, requires_grad=True)
    values, *_ = topk_encode(x_c, w_enc, b_enc, 3)
    values.sum().backward()
    assert torch.equal(b_enc.grad, torch.tensor([1.0, 0.0, 0.0]))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return planted_store(tmp_path_factory.mktemp("sparse") / "acts", planted_dictionary(d=32, features=128), rows=8000)


def test_sparse_and_dense_trainers_agree(store, tmp_path):
    cfg = TrainConfig(k=2, expansion=16, steps=60, batch_size=64, lr=2e-3, dead_steps=3, log_every=20, device="cpu")
    weights = {}
    for sparse in (True, False):
        run_cfg = TrainConfig(**{**cfg.__dict__, "sparse": sparse})
        trainer = Trainer(ActivationStore(store), tmp_path / str(sparse), run_cfg)
        last = trainer.run()
        weights[sparse] = (last, trainer.sae.state_dict())
    (s_last, s_w), (d_last, d_w) = weights[True], weights[False]
    assert abs(s_last["fvu"] - d_last["fvu"]) < 1e-3 and s_last["aux"] > 0  # AuxK ran (dead_steps 3)
    for name in s_w:
        torch.testing.assert_close(s_w[name], d_w[name], atol=2e-4, rtol=1e-3, msg=name)


def test_the_sparse_path_runs_under_bf16_autocast():
    """As on a GPU (bf16 autocast over fp32 weights): gradients come back in each weight's dtype.
    CPU autocast exercises the same casts."""
    torch.manual_seed(0)
    x = torch.randn(64, 16)
    w_enc = torch.randn(16, 128, requires_grad=True)
    b_enc = torch.zeros(128, requires_grad=True)
    w_dec = torch.randn(128, 16, requires_grad=True)
    dead = torch.rand(128) < 0.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        values, indices, aux_values, aux_indices = topk_encode(x, w_enc, b_enc, 4, dead, 8)
        x_hat = sparse_decode(indices, values, w_dec)
    loss = (x_hat.float() - x).pow(2).mean() + sparse_decode(aux_indices, aux_values.float(), w_dec).pow(2).mean()
    loss.backward()
    assert values.dtype == torch.bfloat16
    for weight in (w_enc, b_enc, w_dec):
        assert weight.grad.dtype == torch.float32 and torch.isfinite(weight.grad).all()
