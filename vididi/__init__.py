"""ViDiDi: Video Time-Differentiation for Instance Discrimination.

Importing the package is cheap (no torch): the Snakefile imports `vididi.config` on hosts that
only have Snakemake installed.

    import vididi
    encoder = vididi.load_encoder("vicreg-vididi-small3d-s0.pt")   # an exported encoder or a final.pt
    features = encoder(clips)      # uint8 clips (B, 3, T, H, W) -> (B, feature_dim), normalised as trained
"""

__version__ = "0.2.0"


def load_encoder(path, device="cpu"):
    """An exported encoder (`vididi export`: a state dict with its JSON card) or a run's final.pt, ready
    to embed clips: a `vididi.ssl.encoder.FrameEncoder` holding the network (`.encoder`, eval mode), its
    input normalisation (`.stats`: the training data's mean colour and derivative scales; `.scaling`)
    and `.inputs(clips)`, the normalised float tensor the network takes. Calling it on uint8 RGB clips
    (B, 3, T, H, W) returns their pooled features (B, feature_dim), as the features stage computes them."""
    from .ssl.encoder import frame_encoder_from_file  # torch loads only here

    return frame_encoder_from_file(path, device)
