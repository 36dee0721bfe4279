"""From image files to device batches: datasets, splits, augmentation, preprocessing, loaders. Never imports components."""
