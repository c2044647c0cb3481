"""Small-data augmentation: multiplier boundaries, each transform, training split only."""

from __future__ import annotations

import numpy as np
import pytest

import trainers.torch_base
import trainers.xgboost
from monitors.base import NullMonitor
from trainers.augment import AugmentConfig, augment_training, multiplier
from trainers.dataset import Dataset
from trainers.errors import InvalidInputError
from trainers.features import training_matrix
from trainers.synthetic import MarketSpec, generate_bars
from trainers.table import make_trainer

RNG_SEED = 11


def windows(n: int, window: int = 6, n_features: int = 3) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).normal(size=(n, window, n_features)).astype(np.float32)
    y = (np.arange(n) % 2).astype(np.float64)
    return x, y


@pytest.mark.parametrize(
    ("n", "expected"), [(1, 3), (199, 3), (200, 2), (299, 2), (300, 1), (5000, 1)]
)
def test_multiplier_boundaries(n, expected):
    """3x under 200 training samples, 2x under 300, else 1x."""
    assert multiplier(n) == expected


@pytest.mark.parametrize(("n", "copies"), [(199, 3), (200, 2), (299, 2)])
def test_originals_first_then_augmented_copies(n, copies):
    """Output: the original samples, then multiplier - 1 changed copies with the same labels."""
    x, y = windows(n)
    out_x, out_y = augment_training(x, y, np.random.default_rng(RNG_SEED))
    assert out_x.shape == (copies * n, *x.shape[1:])
    assert out_x.dtype == np.float32
    np.testing.assert_array_equal(out_x[:n], x)
    np.testing.assert_array_equal(out_y, np.tile(y, copies))
    for c in range(1, copies):
        assert not np.array_equal(out_x[c * n : (c + 1) * n], x)


def test_enough_samples_are_returned_untouched():
    """At 300 samples and above augmentation returns its inputs as they are."""
    x, y = windows(300)
    out_x, out_y = augment_training(x, y, np.random.default_rng(RNG_SEED))
    assert out_x is x
    assert out_y is y


def test_does_not_mutate_and_is_reproducible():
    """Inputs stay unchanged; the same generator seed gives the same copies, another seed others."""
    x, y = windows(150)
    x0, y0 = x.copy(), y.copy()
    a, _ = augment_training(x, y, np.random.default_rng(1))
    b, _ = augment_training(x, y, np.random.default_rng(1))
    c, _ = augment_training(x, y, np.random.default_rng(2))
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_time_shift_moves_history_and_keeps_the_latest_row():
    """Shifted copies keep each latest row; their history is the window moved 0..2 rows back."""
    x, y = windows(150)
    config = AugmentConfig(noise_scale=0.0, feature_dropout=0.0, max_shift=2)
    out, _ = augment_training(x, y, np.random.default_rng(RNG_SEED), config)
    copy = out[150:300]
    np.testing.assert_array_equal(copy[:, -1], x[:, -1])
    seen = set()
    for orig, shifted in zip(x, copy, strict=True):
        matches = [
            s
            for s in range(3)
            if np.array_equal(shifted[:-1], orig[np.maximum(np.arange(5) - s, 0)])
        ]
        assert matches, "history is not a shift of the original window"
        seen.add(matches[0])
    assert seen == {0, 1, 2}


def test_feature_dropout_sets_whole_features_to_their_mean():
    """A dropped feature takes its training mean over the whole window; others stay exact."""
    x, y = windows(150)
    config = AugmentConfig(noise_scale=0.0, feature_dropout=0.5, max_shift=0)
    out, _ = augment_training(x, y, np.random.default_rng(RNG_SEED), config)
    mean = x.reshape(-1, 3).mean(axis=0, dtype=np.float64).astype(np.float32)
    copy = out[150:300]
    dropped = kept = 0
    for orig, aug in zip(x, copy, strict=True):
        for f in range(3):
            if np.array_equal(aug[:, f], orig[:, f]):
                kept += 1
            else:
                np.testing.assert_array_equal(aug[:, f], np.full(6, mean[f]))
                dropped += 1
    assert 0.35 < dropped / (dropped + kept) < 0.65


def test_gaussian_noise_scales_with_feature_std():
    """Noise per feature is noise_scale x that feature's training std."""
    x, y = windows(150, n_features=2)
    x[..., 1] *= 100.0
    config = AugmentConfig(noise_scale=0.1, feature_dropout=0.0, max_shift=0)
    out, _ = augment_training(x, y, np.random.default_rng(RNG_SEED), config)
    noise = (out[150:] - np.concatenate([x, x])).reshape(-1, 2)
    feature_std = x.reshape(-1, 2).std(axis=0)
    np.testing.assert_allclose(noise.std(axis=0) / feature_std, 0.1, rtol=0.1)


def test_tabular_rows_get_noise_and_dropout_but_no_shift():
    """(n, F) rows come back as (n x multiplier, F): there is no history to shift."""
    x = np.random.default_rng(0).normal(size=(250, 4)).astype(np.float32)
    y = np.zeros(250)
    out, out_y = augment_training(x, y, np.random.default_rng(RNG_SEED))
    assert out.shape == (500, 4)
    assert out_y.shape == (500,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_scale": -0.1}, "noise_scale must be finite and >= 0"),
        ({"feature_dropout": 1.0}, r"feature_dropout must be in \[0, 1\)"),
        ({"max_shift": -1}, "max_shift must be >= 0"),
    ],
)
def test_config_rejects_bad_strengths(kwargs, message):
    """Nonsense augmentation strengths fail with the setting's name."""
    with pytest.raises(InvalidInputError, match=message):
        AugmentConfig(**kwargs)


# --- trainers augment their training split only ---------------------------------------


@pytest.fixture(scope="module")
def small_data() -> Dataset:
    """About 150 training rows: augmentation triples them."""
    m = training_matrix(generate_bars(MarketSpec("TEST", 3, signal_strength=1.0), 440))
    data = m.dataset(val_fraction=0.15, test_fraction=0.15, min_rows=20)
    assert len(data.y_train) < 200
    return data


@pytest.mark.parametrize(
    ("name", "module"), [("xgboost", trainers.xgboost), ("lstm", trainers.torch_base)]
)
def test_trainers_augment_exactly_their_training_samples(name, module, small_data, monkeypatch):
    """With augment=True a trainer augments its training inputs once, and never val or test."""
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def spy(x, y, rng, config=None):
        seen.append((x.copy(), y.copy()))
        return augment_training(x, y, rng, config)

    monkeypatch.setattr(module, "augment_training", spy)
    model = make_trainer(name, preset="tiny", augment=True).fit(small_data, NullMonitor(), seed=0)
    ((x, y),) = seen
    np.testing.assert_array_equal(x, small_data.inputs("train", model.window))
    np.testing.assert_array_equal(y, small_data.y_train)
    assert model.params["augment"] is True
    assert model.params["train_samples"] == 3 * len(small_data.y_train)


def test_augment_off_trains_on_the_rows_as_they_are(small_data):
    """Without augment the trainer sees exactly the training rows."""
    model = make_trainer("xgboost", preset="tiny").fit(small_data, NullMonitor(), seed=0)
    assert model.params["train_samples"] == len(small_data.y_train)
