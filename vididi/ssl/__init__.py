"""The self-supervised core: derivative views, schedule, losses, frameworks, backbones, DDP, trainer, encoder."""
