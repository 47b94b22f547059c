"""kernels_eval: KernelBench-format CUDA-kernel problems, prompts and an isolated evaluator."""

__version__ = "0.1.0"
