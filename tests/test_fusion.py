"""Context-Prediction Fusion against hand computations."""

import pytest
import torch

from lensing.model import LatentConfig, latent_embedding, prediction_distribution, top_p_filter


def test_top_p_rules_by_hand():
    p = torch.tensor([0.1, 0.5, 0.25, 0.15])
    # reference: cumsum in sorted order 0.5, 0.75, 0.9, 1.0 -> keep while <= 0.8: tokens 1, 2
    torch.testing.assert_close(top_p_filter(p, 0.8, "reference"), torch.tensor([0, 2 / 3, 1 / 3, 0]))
    # nucleus: smallest set reaching 0.8 includes the crossing token 3 (0.5+0.25+0.15)
    torch.testing.assert_close(top_p_filter(p, 0.8, "nucleus"), torch.tensor([0, 0.5, 0.25, 0.15]) / 0.9)
    # reference always keeps the top-1 even when it alone exceeds p
    torch.testing.assert_close(top_p_filter(p, 0.3, "reference"), torch.tensor([0.0, 1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="top_p rule"):
        top_p_filter(p, 0.8, "greedy")


def test_prediction_masks_thinking_before_softmax():
    logits = torch.tensor([1.0, 2.0, 10.0, 0.0])  # id 2 plays <thinking>
    cfg = LatentConfig(top_p=1.0, temperature=2.0)
    expected = torch.softmax(torch.tensor([1.0, 2.0, 0.0]) / 2.0, 0)
    got = prediction_distribution(logits, cfg, thinking_id=2)
    assert got[2] == 0
    torch.testing.assert_close(got[[0, 1, 3]], expected)


@pytest.mark.parametrize("rule", ["reference", "nucleus"])
def test_fusion_by_hand(rule):
    logits = torch.log(torch.tensor([0.05, 0.55, 0.9, 0.3, 0.1]))  # id 2 = <thinking>, masked
    # after masking: probs 0.05, 0.55, 0.3, 0.1 (sum 1); sorted 0.55, 0.3, 0.1, 0.05
    kept = {
        "reference": torch.tensor([0, 0.55, 0, 0, 0]) / 0.55,  # 0.85 > 0.8: only the top-1 survives
        "nucleus": torch.tensor([0, 0.55, 0, 0.3, 0]) / 0.85,
    }[rule]
    E = torch.arange(10.0).reshape(5, 2)
    h = torch.tensor([1.0, -1.0])
    cfg = LatentConfig(alpha=0.6, top_p=0.8, top_p_rule=rule)
    latent, e_pred = latent_embedding(h, logits, E, cfg, thinking_id=2)
    torch.testing.assert_close(e_pred, kept @ E)
    torch.testing.assert_close(latent, 0.6 * h + 0.4 * (kept @ E))
    hidden, _ = latent_embedding(h, logits, E, LatentConfig(mode="hidden"), thinking_id=2)
    torch.testing.assert_close(hidden, h)
    pred, _ = latent_embedding(h, logits, E, LatentConfig(mode="prediction", top_p_rule=rule), thinking_id=2)
    torch.testing.assert_close(pred, kept @ E)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="mode"):
        LatentConfig(mode="soft")
    with pytest.raises(ValueError, match="insert_probs"):
        LatentConfig(max_latents_per_position=3)
    assert LatentConfig.from_dict(LatentConfig(alpha=0.3).to_dict()) == LatentConfig(alpha=0.3)


@pytest.mark.parametrize("rule", ["reference", "nucleus"])
def test_top_p_one_keeps_every_token_of_a_large_vocabulary(rule):
    """The float32 cumulative sum over 50k tokens drifts past the 1e-6 tolerance: p = 1 dropped ~2k tail tokens."""
    probs = torch.softmax(3 * torch.randn(4, 50_000, generator=torch.Generator().manual_seed(0)), dim=-1)
    kept = top_p_filter(probs, 1.0, rule)
    assert (kept > 0).sum().item() == (probs > 0).sum().item() == 4 * 50_000
    torch.testing.assert_close(kept, probs)
