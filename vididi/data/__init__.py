"""Everything before training: datasets (generated or downloaded), listings, ffmpeg, shards, clips, loaders."""
