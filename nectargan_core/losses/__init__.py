"""Loss terms of the generator and discriminator, and their per-epoch weights."""
