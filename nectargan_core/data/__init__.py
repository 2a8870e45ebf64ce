"""Paired image data: the dataset, its transforms and augmentations, validation, sample data, dataset utilities."""
