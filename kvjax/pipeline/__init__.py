"""Text-to-video and image-to-video generation: the reference's samplers and stages (spec §7.6, §8)."""
