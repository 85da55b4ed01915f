"""The bootstrap over sequences behind the model-vs-baseline intervals (finetune/significance.py)."""
import math

import numpy as np
import pytest

from finetune.significance import MIN_SEQUENCES, compare_to_baselines, paired_difference, sequence_of


def keys_for(n_seq: int, frames: int) -> np.ndarray:
    return np.array([f"mmfi/E01/S{s:02d}_A01/{i:03d}" for s in range(n_seq) for i in range(frames)])


def test_sequence_of_drops_the_frame_index():
    assert sequence_of("deepsense/scenario3/17/0042") == "deepsense/scenario3/17"


def test_correlated_frames_widen_the_interval():
    """20 identical frames per sequence carry the information of one frame: the interval over 12 such
    sequences must be as wide as over 12 single frames, far wider than 240 independent frames would give."""
    rng = np.random.default_rng(1)
    per_seq = rng.integers(0, 2, 12).astype(float)  # model right/wrong per sequence; baseline always wrong
    clustered = paired_difference(np.repeat(per_seq, 20), np.zeros(240), keys_for(12, 20))
    single = paired_difference(per_seq, np.zeros(12), keys_for(12, 1))
    independent = paired_difference(rng.integers(0, 2, 240).astype(float), np.zeros(240), keys_for(240, 1))
    width = lambda r: r["ci_high"] - r["ci_low"]  # noqa: E731
    assert clustered["diff"] == pytest.approx(per_seq.mean()) and clustered["sequences"] == 12
    assert width(clustered) == pytest.approx(width(single), abs=0.02)
    assert width(clustered) > 2 * width(independent)
    assert clustered["ci_low"] <= clustered["diff"] <= clustered["ci_high"]


def test_no_interval_from_too_few_sequences():
    r = paired_difference(np.ones(40), np.zeros(40), keys_for(MIN_SEQUENCES - 1, 5)[:40])
    assert r["diff"] == 1.0 and math.isnan(r["ci_low"]) and math.isnan(r["ci_high"])


def test_compare_to_baselines_per_task():
    """A beam model right on every frame of 12 sequences against a majority beam right on a third of them:
    the difference is 2/3 and its interval excludes 0; the pose rows agree with the frame means."""
    keys = keys_for(12, 4)
    labels = np.tile([0, 1, 2], 16)
    logits = np.eye(3)[labels] * 5.0
    train = [np.array(0.0)] * 5 + [np.array(1.0)] * 2  # majority beam 0
    rng = np.random.default_rng(0)
    poses = rng.normal(size=(48, 51))
    out = compare_to_baselines({"beam": train, "hpe": list(poses[:6])},
                               {"beam": {"output": logits, "label": labels, "key": keys},
                                "hpe": {"output": poses, "label": poses, "key": keys}})
    assert out["beam/top1_minus_baseline"] == pytest.approx(2 / 3)
    assert 0 < out["beam/top1_minus_baseline_ci_low"] <= out["beam/top1_minus_baseline_ci_high"] <= 1
    assert out["beam/sequences"] == 12
    mean = poses[:6].mean(0).reshape(17, 3)
    expect = -np.linalg.norm(poses.reshape(48, 17, 3) - mean, axis=-1).mean() * 1000
    assert out["hpe/mpjpe_mm_minus_baseline"] == pytest.approx(expect)  # a perfect pose vs the mean pose
    assert out["hpe/mpjpe_mm_minus_baseline_ci_high"] < 0


def test_auc_interval_over_sequences():
    """Sequences of one class each: a perfectly ranking score has AUC 1 in every replicate; a score that
    ranks the blocked sequences' frames at random straddles 0.5; no interval below the minimum."""
    from finetune.significance import auc_interval
    keys = keys_for(20, 5)
    labels = np.repeat(np.arange(20) % 2, 5)
    perfect = auc_interval(labels + 0.1 * np.random.default_rng(0).random(100), labels, keys)
    assert perfect["ci_low"] == pytest.approx(1.0) and perfect["ci_high"] == pytest.approx(1.0)
    noise = auc_interval(np.random.default_rng(1).random(100), labels, keys)
    assert noise["ci_low"] < 0.5 < noise["ci_high"]
    assert math.isnan(auc_interval(labels.astype(float), labels, keys_for(5, 20))["ci_low"])  # 5 sequences


def test_rank_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    from finetune.significance import _auc
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 60)
    prob = np.round(rng.random(60), 1)  # with ties
    assert _auc(prob, labels) == pytest.approx(roc_auc_score(labels, prob))


def test_blockage_balanced_accuracy_against_the_majority_class():
    """A rare positive class (1 frame in 5 of every sequence): a decision right on every positive and on all but
    one negative per sequence has balanced accuracy 0.5 (1 + 3/4) = 0.875, so 0.375 above the majority class
    (0.5 for any constant decision), with an interval of that value; deciding 'clear' everywhere is exactly 0."""
    keys = keys_for(12, 5)
    labels = np.tile([0, 0, 1, 0, 0], 12)
    train = [np.array(0.0)] * 8 + [np.array(1.0)] * 2
    good = np.where(labels == 1, 3.0, -3.0)
    good[::5] = 3.0  # one false alarm per sequence
    out = compare_to_baselines({"blockage": train}, {"blockage": {"output": good[:, None], "label": labels,
                                                                  "key": keys}})
    assert out["blockage/balanced_accuracy_minus_baseline"] == pytest.approx(0.375)
    assert out["blockage/balanced_accuracy_minus_baseline_ci_low"] == pytest.approx(0.375)
    assert out["blockage/balanced_accuracy_minus_baseline_ci_high"] == pytest.approx(0.375)
    assert out["blockage/accuracy_minus_baseline"] == pytest.approx(0.0)  # 0.8 of frames right, as the majority
    clear = compare_to_baselines({"blockage": train}, {"blockage": {"output": -np.ones((60, 1)), "label": labels,
                                                                   "key": keys}})
    assert clear["blockage/balanced_accuracy_minus_baseline"] == 0.0
    assert clear["blockage/balanced_accuracy_minus_baseline_ci_low"] == 0.0


def test_persistence_reference_against_the_majority_and_the_model():
    """Every sequence (12 of 5 frames) blocked at frames 2-3 and labelled 1 at frames 1-3 (an onset at 1):
    persistence (frame t's state) is right on 4 of 5, the majority 'clear' on 2 of 5, so persistence is +0.4
    above it in every sequence (an interval of that value); a model calling only frame 2 blocked is right on
    3 of 5, 0.2 below persistence. Without a recorded state (or with one frame unrecorded) nothing is
    reported."""
    keys = keys_for(12, 5)
    labels = np.tile([0, 1, 1, 1, 0], 12)
    now = np.tile([0, 0, 1, 1, 0], 12)
    train = [np.array(0.0)] * 8 + [np.array(1.0)] * 2
    model = np.tile([-1.0, -1.0, 1.0, -1.0, -1.0], 12)[:, None]
    arrays = {"blockage": {"output": model, "label": labels, "key": keys, "blocked_now": now}}
    out = compare_to_baselines({"blockage": train}, arrays)
    assert out["blockage/persistence_minus_baseline"] == pytest.approx(0.4)
    assert out["blockage/persistence_minus_baseline_ci_low"] == pytest.approx(0.4)
    assert out["blockage/persistence_minus_baseline_ci_high"] == pytest.approx(0.4)
    assert out["blockage/accuracy_minus_persistence"] == pytest.approx(-0.2)
    assert out["blockage/accuracy_minus_persistence_ci_high"] == pytest.approx(-0.2)
    unrecorded = dict(arrays["blockage"], blocked_now=np.where(np.arange(60) == 7, -1, now))
    for a in (unrecorded, {k: v for k, v in arrays["blockage"].items() if k != "blocked_now"}):
        assert not any("persistence" in k for k in compare_to_baselines({"blockage": train}, {"blockage": a}))
