"""Metrics over frozen features: retrieval, linear probe, detection, analysis (silhouette, t-SNE, Grad-CAM)."""
