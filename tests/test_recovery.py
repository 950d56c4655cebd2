"""Recovery: the cached teacher pool and the distillation steps a trial pays for."""

import copy

import pytest
import torch

from grasp.data import load_dataset
from grasp.models import get_model
from grasp.train import distillation_loss
from search.recovery import Recipe, RecoveryPool, recover


@pytest.fixture
def train_data(jacquard_root):
    dataset = load_dataset("jacquard", jacquard_root, output_size=96)
    return dataset.subset(range(len(dataset)), augment=True)


def test_the_pool_holds_crops_with_the_teachers_outputs_on_them(train_data):
    torch.manual_seed(0)
    teacher = get_model("ggcnn").eval()
    pool = RecoveryPool.build(train_data, teacher, samples=6, crop=48, seed=1)
    assert pool.x.shape == (6, 1, 48, 48) and pool.y.shape == pool.taught.shape == (6, 4, 48, 48)
    with torch.no_grad():
        again = torch.cat(teacher(pool.x[:2]), dim=1)
    torch.testing.assert_close(pool.taught[:2], again)  # targets are the teacher's, on the crop
    same = RecoveryPool.build(train_data, teacher, samples=6, crop=48, seed=1)
    assert torch.equal(same.x, pool.x)  # seeded: every worker and trial sees the same pool
    assert len(RecoveryPool.build(train_data, teacher, samples=6, crop=48, limit=4)) == 4
    with pytest.raises(ValueError, match=r"crop: must be in \(0, 96\], got 120"):
        RecoveryPool.build(train_data, teacher, samples=2, crop=120)


def teacher_and_shaken_student():
    """A random GG-CNN and a copy of it with noise on every weight."""
    torch.manual_seed(0)
    teacher = get_model("ggcnn").eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return teacher, student


def gap(student, pool) -> float:
    """How far the student's maps are from the teacher's on the pool."""
    with torch.no_grad():
        return distillation_loss(student(pool.x), pool.taught.split(1, dim=1)).item()


def test_recovery_moves_the_student_towards_the_teacher(train_data):
    teacher, student = teacher_and_shaken_student()
    pool = RecoveryPool.build(train_data, teacher, samples=8, seed=0)

    before = gap(student, pool)
    done = []
    recover(student, pool, 15, Recipe(batch_size=4, lr=1e-3, distill_weight=1.0),
            on_step=done.append)
    assert gap(student, pool) < 0.7 * before
    assert not student.training
    assert done == list(range(1, 16))  # what a progress bar is driven by


@pytest.mark.parametrize("start, total, largest_step", [(0, 100, 1e-2), (99, 100, 3e-6)])
def test_a_cosine_schedule_goes_on_where_an_earlier_stage_left_off(train_data, start, total,
                                                                    largest_step):
    teacher, student = teacher_and_shaken_student()
    before = copy.deepcopy(student)
    pool = RecoveryPool.build(train_data, teacher, samples=4, seed=0)
    # One Adam step moves each weight by about the learning rate in force: the full rate
    # at the start of the run, almost nothing at its last step.
    recover(student, pool, 1, Recipe(batch_size=4, lr=1e-2, distill_weight=1.0,
                                      lr_schedule="cosine"), start=start, total=total)
    moved = max((a - b).abs().max().item()
                for a, b in zip(student.parameters(), before.parameters(), strict=True))
    assert largest_step / 3 < moved < largest_step * 1.01
    with pytest.raises(ValueError, match=r"lr_schedule: must be one of .*got 'step'"):
        Recipe(batch_size=4, lr=1e-2, distill_weight=1.0, lr_schedule="step")


def test_recovery_keeps_a_batch_norm_networks_statistics_and_trains_its_scale(train_data):
    """Batch norm normalises by the statistics the network shipped with during recovery
    (a few crops per step would replace them); its scale and shift still learn."""
    torch.manual_seed(0)
    teacher = get_model("grconvnet", channel_size=4).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    bn = student.bn1
    mean, var, scale = (bn.running_mean.clone(), bn.running_var.clone(), bn.weight.clone())
    batches = bn.num_batches_tracked.clone()
    pool = RecoveryPool.build(train_data, teacher, samples=8, seed=0)
    recover(student, pool, 5, Recipe(batch_size=4, lr=1e-2, distill_weight=1.0))
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    assert torch.equal(bn.num_batches_tracked, batches)
    assert not torch.equal(bn.weight, scale)
    assert not student.training and not bn.training


def test_channels_last_recovery_is_fp32_recovery_in_another_layout(train_data):
    """channels_last changes where numbers sit, not what is computed: the recovered weights
    match fp32's to float rounding (far below what the steps moved them), and the model is
    handed back in the default layout, as the exporters expect."""
    teacher, student = teacher_and_shaken_student()
    pool = RecoveryPool.build(train_data, teacher, samples=8, seed=0)
    start = copy.deepcopy(student)
    recipe = Recipe(batch_size=4, lr=1e-3, distill_weight=1.0)
    plain = recover(copy.deepcopy(student), pool, 5, recipe)
    laid_out = []
    nhwc = recover(student, pool, 5, Recipe(batch_size=4, lr=1e-3, distill_weight=1.0,
                                            compute="channels_last"),
                   on_step=lambda _: laid_out.append(student.conv2.weight.is_contiguous(
                       memory_format=torch.channels_last)))
    assert laid_out == [True] * 5  # the steps ran in that layout
    for a, b, s in zip(nhwc.parameters(), plain.parameters(), start.parameters(), strict=True):
        assert (a - b).abs().max() < 1e-2 * max((b - s).abs().max().item(), 1e-6)
        assert a.is_contiguous()


def test_bf16_recovery_trains_in_fp32_weights_and_hands_back_an_fp32_model(train_data):
    teacher, student = teacher_and_shaken_student()
    pool = RecoveryPool.build(train_data, teacher, samples=8, seed=0)

    before = gap(student, pool)
    recover(student, pool, 15, Recipe(batch_size=4, lr=1e-3, distill_weight=1.0,
                                      compute="bf16"))
    assert gap(student, pool) < 0.7 * before
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in student.parameters())
    with pytest.raises(ValueError, match=r"compute: must be one of .*got 'fp16'"):
        Recipe(batch_size=4, lr=1e-2, distill_weight=1.0, compute="fp16")
