"""NectarGAN Core: a pipeline-orchestrated trainer for Pix2pix-style conditional GANs (see docs/code-map.md)."""
