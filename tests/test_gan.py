"""The shared adversarial machinery (transmute.gan) that cyclegan_vc, pix2pix and cyclegan train with."""

import pytest
import torch

from transmute.gan import (CycleObjective, HistoryBuffer, PatchDiscriminator, adversarial_loss, linear_decay,
                           patch_layers, receptive_field)


def test_adversarial_losses_reward_the_right_answer():
    high, low = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    for kind in ("lsgan", "vanilla"):
        assert adversarial_loss(high, True, kind) < adversarial_loss(low, True, kind)
        assert adversarial_loss(low, False, kind) < adversarial_loss(high, False, kind)
    assert adversarial_loss(torch.ones(3), True, "lsgan") == 0
    with pytest.raises(ValueError, match="hinge"):
        adversarial_loss(high, True, "hinge")


def test_patchgan_receptive_field_is_the_papers_70_pixels():
    assert receptive_field(3) == 70 and receptive_field(2) == 34 and receptive_field(1) == 16
    assert [patch_layers(s) for s in (256, 128, 64, 32)] == [3, 3, 2, 1]
    # Measured, not computed: one output score depends on exactly 70x70 input pixels.
    d = PatchDiscriminator(3, 8, 3, norm="batch").eval()  # instance norm would make every score global
    x = torch.zeros(1, 3, 128, 128, requires_grad=True)
    d(x)[0, 0, 5, 5].backward()
    rows = x.grad.abs().sum(dim=(0, 1, 3)).nonzero()
    assert int(rows.max() - rows.min() + 1) == 70


def test_history_buffer_fills_then_swaps_and_resumes_exactly():
    torch.manual_seed(0)
    pool = HistoryBuffer(4, (1, 2, 2))
    first = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 2, 2)
    assert torch.equal(pool(first), first)  # filling: shown as they come
    assert int(pool.count) == 4
    state = {k: v.clone() for k, v in pool.state_dict().items()}
    rng = torch.get_rng_state()
    new = torch.full((64, 1, 2, 2), 9.0)
    shown = pool(new)
    old = (shown != 9).any(dim=(1, 2, 3))
    assert 0 < int(old.sum()) < 64  # about half the time an older item is shown instead
    again = HistoryBuffer(4, (1, 2, 2))
    again.load_state_dict(state)
    torch.set_rng_state(rng)
    assert torch.equal(again(new), shown)
    assert torch.equal(HistoryBuffer(0, (1, 2, 2))(new), new)


def test_cycle_objective_is_zero_for_perfect_identity_translators():
    a, b = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    ident = lambda x: x  # noqa: E731
    says_real = lambda x: torch.ones(x.shape[0], 1, 2, 2)  # noqa: E731
    total, parts, outputs = CycleObjective().generators(ident, ident, says_real, says_real, a, b)
    assert float(total) == 0 and set(parts) == {"g_adv", "cycle", "identity"}
    assert torch.equal(outputs["fake_b"], a)
    loss, d_parts = CycleObjective().discriminators(says_real, says_real, a, b, outputs)
    assert float(loss) == pytest.approx(2 * 0.5 * 1.0)  # each D is fooled on the fakes: (1 - 0)^2 halved


def test_linear_decay_holds_then_reaches_zero():
    f = linear_decay(100, 50)
    assert f(0) == f(49) == 1.0 and f(75) == pytest.approx(0.5) and f(100) == 0.0
