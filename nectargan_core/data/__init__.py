"""Paired image data: the dataset and its transforms and augmentations, validation, the sample data, dataset utilities."""
