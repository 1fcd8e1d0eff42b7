"""ViDiDi: Video Time-Differentiation for Instance Discrimination.

Importing the package is cheap (no torch): the Snakefile imports `vididi.config` on hosts that
only have Snakemake installed.
"""

__version__ = "0.2.0"
