"""The depth-aligned training forward gives the old per-position forward's loss and gradients."""

import pytest
import torch
from conftest import make_tiny_lm

from lensing.model.latent_lm import depth_layout
from lensing.model.reference import per_position_forward


def random_batch(lm, n=12, seed=0):
    """Right-padded rows of different lengths with 0..5 latents at random places (never first)."""
    gen = torch.Generator().manual_seed(seed)
    text = lm.encode("a=12;b=a+3;c=b-5;c?\nb=12+3=15\nc=15-5=10\n###10")
    rows = []
    for i in range(n):
        body = text[: len(text) - int(torch.randint(0, 15, (1,), generator=gen))]
        for _ in range(i % 6):
            at = int(torch.randint(1, len(body), (1,), generator=gen))
            body = body[:at] + [lm.thinking_id] + body[at:]
        rows.append(body)
    width = max(map(len, rows))
    ids = torch.full((n, width), lm._pad_id)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    labels = torch.where(mask.bool(), ids, -100)
    return ids, mask, labels


def test_layout_keeps_order_and_aligns_latents():
    is_latent = torch.tensor([[0, 1, 0, 0, 1, 0], [0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    layout = depth_layout(is_latent)
    col = layout.column
    assert (col[:, 1:] > col[:, :-1]).all()  # order kept within each row
    assert len(layout.offsets) - 1 == 3  # two latents deep: three passes, not one per distinct column
    ends = torch.tensor(layout.offsets[1:]) - 1  # last column of each block
    for b, p in is_latent.nonzero().tolist():
        block = int((torch.tensor(layout.offsets[1:]) <= col[b, p]).sum())
        assert int(col[b, p - 1]) == int(ends[block - 1])  # the position before a latent ends the previous block
    assert layout.widths.sum() < 3 * is_latent.shape[1]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_same_loss_and_gradients_as_per_position_forward(tmp_path, attn):
    lm = make_tiny_lm(tmp_path / "tok", mode="fusion")
    lm.model.config._attn_implementation = attn
    lm.train()
    ids, mask, labels = random_batch(lm)
    grads = []
    def new_forward():
        out = lm(ids, mask, labels)
        return out.logits, out.loss

    for run in (lambda: per_position_forward(lm, ids, mask, labels), new_forward):
        lm.zero_grad()
        logits, loss = run()
        loss.backward()
        grads.append((logits.detach(), loss.detach(), [p.grad.clone() for p in lm.parameters()]))
    (l_old, loss_old, g_old), (l_new, loss_new, g_new) = grads
    real = mask.bool()
    torch.testing.assert_close(l_new[real], l_old[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(loss_new, loss_old, atol=1e-6, rtol=0)
    for a, b in zip(g_new, g_old, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
