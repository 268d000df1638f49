"""A measurable toy text-to-image world: generator, model folder, pretraining, sampling and probe."""
