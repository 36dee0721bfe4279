"""The 'device' path against the 'workers' path: exact where deterministic, same distribution where random."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch

import trainkit.data.build as data_module
from conftest import compose_config as config
from trainkit.data.augmentation import augment, build_pipeline
from trainkit.data.build import build_data
from trainkit.data.sources import ArraySource
from trainkit.data.device_loader import DeviceLoader, apply_ops, batched_ops
from trainkit.errors import UserError
from trainkit.data.loaders import WorkerLoader

CPU = torch.device("cpu")


def compose_of(*transforms) -> A.Compose:
    return A.Compose(list(transforms) + [A.ToTensorV2()])


def both_paths(pipeline: A.Compose, images: np.ndarray, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The same images augmented by albumentations (one seed each) and by the batched ops."""
    workers = torch.stack([augment(pipeline, image, seed=seed * 100_003 + i) for i, image in enumerate(images)])
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    ops = batched_ops(pipeline, tuple(batch.shape[1:]), "augmentation.train")
    return workers, apply_ops(ops, batch, torch.Generator().manual_seed(seed))


def random_images(n, h=8, w=8, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


@pytest.mark.parametrize("flip, dim", [(A.HorizontalFlip, 3), (A.VerticalFlip, 2)])
def test_a_flip_is_exactly_a_flip(flip, dim):
    images = random_images(600)
    original = torch.from_numpy(images).permute(0, 3, 1, 2)
    for out in both_paths(compose_of(flip(p=0.5)), images):
        flipped = (out == original.flip(dim)).flatten(1).all(1)
        same = (out == original).flatten(1).all(1)
        assert bool((flipped | same).all())  # every image is either untouched or exactly mirrored
        assert 0.42 < flipped.float().mean() < 0.58


def _offsets(out: torch.Tensor, padded: torch.Tensor, size: int) -> list[tuple[int, int]]:
    """For each output, the (top, left) of the window of its padded source that it equals."""
    found = []
    span = padded.shape[-1] - size + 1
    for o, p in zip(out, padded):
        hits = [(t, l) for t in range(span) for l in range(span) if torch.equal(o, p[:, t:t + size, l:l + size])]
        assert len(hits) == 1, "a crop must be one window of the padded image"
        found.append(hits[0])
    return found


def test_crops_stay_inside_the_padded_image_and_offsets_agree():
    n, size, pad = 1500, 8, 2
    coords = (1 + np.arange(size * size, dtype=np.uint8).reshape(size, size, 1))  # every pixel unique, 0 = padding
    images = np.repeat(coords[None], n, axis=0)
    pipeline = compose_of(A.Pad(padding=pad, fill=0, border_mode=0), A.RandomCrop(height=size, width=size))
    workers, device = both_paths(pipeline, images)
    padded = torch.nn.functional.pad(torch.from_numpy(images).permute(0, 3, 1, 2), (pad,) * 4)
    cells = (2 * pad + 1) ** 2
    histograms = []
    for out in (workers, device):
        offsets = _offsets(out, padded, size)
        counts = np.bincount([t * (2 * pad + 1) + l for t, l in offsets], minlength=cells)
        histograms.append(counts)
        assert counts.min() > 0  # every shift occurs
    # Two-sample chi-square over the 25 shifts: the paths draw from one distribution.
    a, b = histograms
    chi2 = (((a - b) ** 2) / np.maximum(a + b, 1)).sum()
    assert chi2 < 51.2, (chi2, a, b)  # the 0.999 quantile for 24 degrees of freedom


@pytest.mark.parametrize("holes", [(0.5, 0.5), (3, 6)])
def test_cutout_zeroes_one_rectangle_of_the_configured_size(holes):
    n, size = 800, 16
    images = np.full((n, size, size, 3), 255, dtype=np.uint8)
    pipeline = compose_of(A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=holes, hole_width_range=holes, fill=0, p=1.0))
    stats = []
    for out in both_paths(pipeline, images):
        zero = out == 0
        assert bool((zero == zero[:, :1]).all())  # the same hole in every channel
        heights, widths, tops = [], [], []
        for mask in zero[:, 0]:
            rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
            h, w = len(rows), len(cols)
            assert mask.sum() == h * w  # one filled rectangle
            heights.append(h), widths.append(w), tops.append(int(rows[0]) if h else 0)
        if isinstance(holes[0], float):
            assert set(heights) == set(widths) == {8}
        else:
            assert set(heights) <= set(range(3, 7)) and set(heights) >= {3, 6}
        stats.append((np.mean(heights), np.mean(tops)))
    (h_w, top_w), (h_d, top_d) = stats
    assert abs(h_w - h_d) < 0.25 and abs(top_w - top_d) < 0.6


@pytest.mark.parametrize("preset", ["flip_crop", "cutout"])
def test_statistics_of_many_augmented_samples_agree(preset):
    """The real presets through build_data on both paths: per-pixel mean and std over ~7,800 samples."""
    results = {}
    for loader in ("workers", "device"):
        cfg = config("dataset=digits", f"augmentation={preset}", f"dataset.loader={loader}", "dataset.workers=0",
                     "trainer.batch_size=256")
        data = build_data(cfg, CPU)
        assert data.loader_kind == loader
        batches = []
        for epoch in range(6):
            data.train.set_epoch(epoch)
            batches += [images for images, _ in data.train]
        x = torch.cat(batches).double()
        results[loader] = (x.mean(0), x.std(0), x.mean(), x.std(), len(x))
    (mw, sw, gmw, gsw, nw), (md, sd, gmd, gsd, nd) = results["workers"], results["device"]
    assert nw == nd > 7000
    # Tolerances are about 5 standard errors (measured over 20 epochs: the epoch means of the
    # two paths agree to 0.2 on 0..255, and an epoch's mean varies by about 0.5).
    assert abs(gmw - gmd) < 0.035 * gmw and abs(gsw - gsd) < 0.03 * gsw
    assert (mw - md).abs().max() < 10  # per-pixel means on 0..255
    assert (sw - sd).abs().max() < 10


# -- two-sample tests: the same distribution on both paths, judged in standard errors ------------------
# Every draw is seeded, so these give the same verdict on every run; the margins leave room for
# another albumentations or torch version's random stream, not for a different distribution.

def two_sample_chi2_p(a, b) -> float:
    """p-value of 'counts a and b come from one distribution' (chi-square, two samples); cells with
    fewer than 10 observations between them are pooled, so the approximation holds."""
    from scipy.stats import chi2

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    small = (a + b) < 10
    a = np.append(a[~small], a[small].sum())
    b = np.append(b[~small], b[small].sum())
    keep = (a + b) > 0
    a, b = a[keep], b[keep]
    if len(a) < 2:
        return 1.0
    ka, kb = np.sqrt(b.sum() / a.sum()), np.sqrt(a.sum() / b.sum())
    statistic = (((ka * a - kb * b) ** 2) / (a + b)).sum()
    return float(chi2.sf(statistic, len(a) - 1))


def holes_seen(out: torch.Tensor) -> tuple[np.ndarray, list[int], list[int], list[int]]:
    """What the outputs show of the cutout draws (fill 0 on images with no 0 pixel): per image whether
    it was cut and into how many separate holes; heights and widths of the holes that stand alone
    (a connected zero region that fills its bounding box). Overlapping holes merge the same way on
    both paths, so equal draws give equal histograms of these."""
    from scipy import ndimage

    cut, counts, heights, widths = [], [], [], []
    for mask in (out[:, 0] == 0).numpy():
        labels, k = ndimage.label(mask)
        cut.append(k > 0)
        counts.append(k)
        for j, box in enumerate(ndimage.find_objects(labels), start=1):
            if (labels[box] == j).all():
                heights.append(box[0].stop - box[0].start)
                widths.append(box[1].stop - box[1].start)
    return np.array(cut), counts, heights, widths


def test_cutout_draws_agree_between_paths():
    """CoarseDropout with every draw random: whether, how many holes, how tall, how wide."""
    n, size = 4000, 16
    images = np.full((n, size, size, 1), 200, dtype=np.uint8)
    pipeline = compose_of(A.CoarseDropout(num_holes_range=(1, 3), hole_height_range=(0.25, 0.5),
                                          hole_width_range=(0.25, 0.5), fill=0, p=0.5))
    outputs = both_paths(pipeline, images)
    (cut_w, count_w, h_w, w_w), (cut_d, count_d, h_d, w_d) = (holes_seen(out) for out in outputs)
    area_w, area_d = ((out[:, 0] == 0).flatten(1).sum(1).numpy() for out in outputs)
    # Applied or not: p = 0.5 on each path, and the same rate on both (in standard errors).
    for cut in (cut_w, cut_d):
        assert abs(cut.mean() - 0.5) < 4 * np.sqrt(0.25 / n), cut.mean()
    pooled = (cut_w.mean() + cut_d.mean()) / 2
    assert abs(cut_w.mean() - cut_d.mean()) < 4 * np.sqrt(pooled * (1 - pooled) * 2 / n)
    # A hole is floor(16 * U[0.25, 0.5)) = 4..7 pixels; holes that touch merge into larger regions.
    assert np.isin(h_w, [4, 5, 6, 7]).mean() > 0.8 and np.isin(w_w, [4, 5, 6, 7]).mean() > 0.8
    for name, a, b, cells in (("holes per image", count_w, count_d, 4), ("hole height", h_w, h_d, size + 1),
                              ("hole width", w_w, w_d, size + 1), ("pixels cut", area_w, area_d, size * size + 1)):
        hist_a, hist_b = np.bincount(a, minlength=cells), np.bincount(b, minlength=cells)
        assert two_sample_chi2_p(hist_a, hist_b) > 1e-4, (name, hist_a, hist_b)


@pytest.mark.parametrize("flip, dim", [(A.HorizontalFlip, 3), (A.VerticalFlip, 2)])
def test_flip_rates_agree_between_paths(flip, dim):
    n, p = 12_000, 0.3
    images = np.repeat(np.arange(4, dtype=np.uint8).reshape(1, 2, 2, 1), n, axis=0)  # every flip visible
    original = torch.from_numpy(images).permute(0, 3, 1, 2)
    rates = []
    for out in both_paths(compose_of(flip(p=p)), images):
        flipped = (out == original.flip(dim)).flatten(1).all(1)
        assert bool((flipped | (out == original).flatten(1).all(1)).all())
        rates.append(flipped.double().mean().item())
        assert abs(rates[-1] - p) < 4 * np.sqrt(p * (1 - p) / n), rates  # each path flips at p
    pooled = sum(rates) / 2
    assert abs(rates[0] - rates[1]) < 4 * np.sqrt(pooled * (1 - pooled) * 2 / n), rates


def ramp_images(n: int, size: int, channels: int) -> np.ndarray:
    """Lopsided images: bright on the right (and, in RGB, bright on the left and at the bottom),
    so a flip or a shift moves the per-pixel means; no 0 pixel, so padding and holes show too."""
    ramp = np.linspace(20, 235, size)
    planes = [np.broadcast_to(ramp, (size, size)), np.broadcast_to(ramp[::-1], (size, size)),
              np.broadcast_to(ramp[:, None], (size, size))][:channels]
    image = np.stack(planes, axis=-1).round().astype(np.uint8)
    return np.repeat(image[None], n, axis=0)


def loader_samples(loader, epochs: int) -> torch.Tensor:
    batches = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        batches += [x for x, _ in loader]
    return torch.cat(batches).double()


def max_z(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest per-pixel difference of means between two samples, in standard errors."""
    diff = a.mean(0) - b.mean(0)
    se = torch.sqrt(a.var(0) / len(a) + b.var(0) / len(b))
    z = torch.where(se > 0, diff.abs() / se.clamp_min(1e-12), torch.where(diff == 0, 0.0, float("inf")))
    return float(z.max())


@pytest.mark.parametrize("channels", [1, 3], ids=["grey", "rgb"])
@pytest.mark.parametrize("preset", ["flip", "flip_crop", "cutout"])
def test_per_pixel_mean_and_std_agree_on_lopsided_images(preset, channels):
    """The real presets on both loaders, 6,000 samples each: per-pixel mean and mean square (so std)
    within 5 standard errors, column means within 4. On a horizontal ramp a flip that is missing or
    too rare moves whole columns (measured: a flip at 0.425 instead of 0.5 is 5-8 standard errors)."""
    size = 16
    cfg = config("dataset=digits", f"augmentation={preset}", f"dataset.image_size={size}")
    pipeline = build_pipeline(cfg.augmentation.train, "augmentation.train")
    source = ArraySource(ramp_images(1000, size, channels), np.zeros(1000, dtype=np.int64))
    ops = batched_ops(pipeline, (channels, size, size), "augmentation.train")
    workers = loader_samples(WorkerLoader(source, pipeline, batch_size=500, seed=1, train=True, workers=0, pin_memory=False), 6)
    device = loader_samples(DeviceLoader(source, ops, batch_size=500, seed=1, train=True, device=CPU), 6)
    assert len(workers) == len(device) == 6000
    assert max_z(workers, device) < 5
    assert max_z(workers.square(), device.square()) < 5
    assert max_z(workers.mean(dim=(1, 2)), device.mean(dim=(1, 2))) < 4  # per column, over rows and channels
    unaugmented = torch.from_numpy(source.images[:1]).permute(0, 3, 1, 2).double()
    assert (workers.mean(0) - unaugmented[0]).abs().max() > 20  # the augmentation does move these means


@pytest.mark.parametrize("border_mode", [0, 1, 4])
def test_deterministic_ops_match_exactly(border_mode):
    images = random_images(20, h=10, w=12)
    pipeline = compose_of(A.PadIfNeeded(min_height=14, min_width=15, border_mode=border_mode, fill=7),
                          A.CenterCrop(height=12, width=13))
    workers, device = both_paths(pipeline, images)
    assert torch.equal(workers, device)


def test_unbatchable_settings_are_named():
    from trainkit.data.device_loader import NotBatchable

    for t, words in ((A.Pad(padding=2, border_mode=3), "border_mode"), (A.RandomCrop(4, 4, p=0.5), "p=0.5"),
                     (A.CoarseDropout(fill="random"), "fill"), (A.Blur(), "Blur")):
        with pytest.raises(NotBatchable, match=words):
            batched_ops(compose_of(t), (3, 8, 8), "augmentation.train")


def make_source(n=50, seed=0, labels=None):
    images = random_images(n, seed=seed)
    return ArraySource(images, labels if labels is not None else np.arange(n) % 5)


def flip_crop_ops():
    pipeline = compose_of(A.Pad(padding=2), A.RandomCrop(8, 8), A.HorizontalFlip(p=0.5), A.CoarseDropout(p=0.5))
    return pipeline, batched_ops(pipeline, (3, 8, 8), "augmentation.train")


def collect(loader, epoch, skip=0):
    loader.set_epoch(epoch)
    if skip:
        loader.skip_batches(skip)
    return [(x.clone(), y.clone()) for x, y in loader]


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def test_device_loader_is_seeded_resumable_and_keeps_the_last_batch():
    source = make_source(50)
    _, ops = flip_crop_ops()
    loader = DeviceLoader(source, ops, batch_size=16, seed=3, train=True, device=CPU)
    assert len(loader) == 4
    full = collect(loader, epoch=2)
    assert [len(y) for _, y in full] == [16, 16, 16, 2]  # nothing dropped
    assert sorted(torch.cat([y for _, y in full]).tolist()) == sorted(source.labels.tolist())
    again = DeviceLoader(source, ops, batch_size=16, seed=3, train=True, device=CPU)
    assert same_batches(collect(again, epoch=2), full)
    assert same_batches(collect(again, epoch=2, skip=2), full[2:])  # resume mid-epoch: the same draws
    assert not same_batches(collect(again, epoch=3), full)  # a new epoch: new order and draws
    other_seed = DeviceLoader(source, ops, batch_size=16, seed=4, train=True, device=CPU)
    assert not same_batches(collect(other_seed, epoch=2), full)
    # eval loaders keep the dataset order
    evaluation = DeviceLoader(source, [], batch_size=16, seed=3, train=False, device=CPU)
    assert torch.equal(torch.cat([y for _, y in evaluation]), torch.from_numpy(source.labels))


def test_worker_loader_is_resumable_and_independent_of_worker_count():
    source = make_source(40)
    pipeline, _ = flip_crop_ops()
    make = lambda workers: WorkerLoader(source, pipeline, batch_size=16, seed=5, train=True, workers=workers, pin_memory=False)  # noqa: E731
    serial = make(0)
    assert len(serial) == 3
    full = collect(serial, epoch=1)
    assert [len(y) for _, y in full] == [16, 16, 8]
    state = torch.get_rng_state()
    parallel = make(2)
    assert same_batches(collect(parallel, epoch=1), full)  # 2 worker processes, the same images
    assert same_batches(collect(parallel, epoch=1, skip=1), full[1:])
    assert torch.equal(torch.get_rng_state(), state)  # iterating never touches the global torch RNG
    assert len(parallel) == 3  # the whole epoch, also after skip_batches


def test_both_paths_visit_samples_in_the_same_order():
    source = make_source(40)
    pipeline, ops = flip_crop_ops()
    device = DeviceLoader(source, ops, batch_size=16, seed=9, train=True, device=CPU)
    workers = WorkerLoader(source, pipeline, batch_size=16, seed=9, train=True, workers=0, pin_memory=False)
    for epoch in (0, 1):
        assert torch.equal(torch.cat([y for _, y in collect(device, epoch)]), torch.cat([y for _, y in collect(workers, epoch)]))


def test_balanced_sampler_on_the_device_path():
    labels = np.array([0] * 900 + [1] * 100)
    source = make_source(1000, labels=labels)
    weights = data_module.class_weights(labels, 2)[torch.from_numpy(labels)]
    loader = DeviceLoader(source, [], batch_size=100, seed=0, train=True, device=CPU, weights=weights)
    drawn = torch.cat([y for _, y in collect(loader, 0)])
    assert len(drawn) == 1000 and 0.4 < drawn.float().mean() < 0.6


def test_auto_picks_device_when_every_transform_is_batched():
    data = build_data(config("dataset=digits", "augmentation=flip_crop"), CPU)
    assert data.loader_kind == "device" and "batched" in data.loader_reason and "fits" in data.loader_reason


def test_auto_picks_workers_and_names_the_transform():
    data = build_data(config("dataset=digits", "augmentation=color_jitter", "dataset.workers=0"), CPU)
    assert data.loader_kind == "workers" and "ColorJitter" in data.loader_reason
    with pytest.raises(UserError, match="ColorJitter.*dataset.loader=workers"):
        build_data(config("dataset=digits", "augmentation=color_jitter", "dataset.loader=device"), CPU)


def test_auto_picks_workers_when_the_data_does_not_fit(monkeypatch):
    monkeypatch.setattr(data_module, "free_memory", lambda device: 100_000)
    data = build_data(config("dataset=digits", "augmentation=flip", "dataset.workers=0"), CPU)
    assert data.loader_kind == "workers" and "free on cpu" in data.loader_reason
    with pytest.raises(UserError, match="free on cpu"):
        build_data(config("dataset=digits", "dataset.loader=device"), CPU)


def test_sample_train_batch_is_fixed_and_leaves_training_alone():
    cfg = config("dataset=digits", "augmentation=cutout")
    data = build_data(cfg, CPU)
    first = collect(data.train, 0)
    images, labels = data.sample_train_batch(16)
    assert images.shape == (16, 1, 8, 8) and images.dtype == torch.uint8 and images.device.type == "cpu"
    assert torch.equal(data.sample_train_batch(16)[0], images)
    assert same_batches(collect(data.train, 0), first)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_equal_cpu_batches():
    source = make_source(100)
    _, ops = flip_crop_ops()
    cpu = collect(DeviceLoader(source, ops, batch_size=32, seed=1, train=True, device=CPU), 0)
    gpu = collect(DeviceLoader(source, ops, batch_size=32, seed=1, train=True, device=torch.device("cuda")), 0)
    assert all(x.device.type == "cuda" for x, _ in gpu)
    assert same_batches([(x.cpu(), y.cpu()) for x, y in gpu], cpu)
