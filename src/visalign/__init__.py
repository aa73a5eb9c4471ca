"""visalign: make vision-language models hallucinate less (nSFT, FiSAO and baselines)."""

__version__ = "0.1.0"
