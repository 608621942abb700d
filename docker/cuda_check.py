"""Build-time check of the cuda image (docker/Dockerfile.cuda), on a machine without a GPU.

It fails the build, not the first job on a GPU node, when torch is not a CUDA build (a local CPU wheel got
in) or bitsandbytes' CUDA kernels are missing or do not load against this torch's CUDA runtime.
"""

from __future__ import annotations

import torch

assert torch.backends.cuda.is_built() and torch.version.cuda, f"torch {torch.__version__} is not a CUDA build"

# bitsandbytes picks its native library at import from what torch reports about the GPUs. Here there is
# none, so torch's answers are those of a compute-capability 8.0 machine: the import then takes its GPU
# path, loads the CUDA kernels for this torch's CUDA version and registers its CUDA backend.
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1
torch.cuda.get_device_capability = lambda device=None: (8, 0)

import bitsandbytes  # noqa: E402
from bitsandbytes import cextension  # noqa: E402

lib = cextension.lib
assert cextension.BNB_BACKEND == "CUDA", cextension.BNB_BACKEND
assert type(lib).__name__ == "CudaBNBNativeLibrary", f"bitsandbytes loaded {type(lib).__name__}, not its CUDA kernels"
assert hasattr(bitsandbytes, "cuda_ops"), "bitsandbytes did not import its CUDA backend"
# QLoRA's 4-bit paths: getattr on the loaded library raises AttributeError for a missing symbol.
for kernel in ("cdequantize_blockwise_bf16_nf4", "cgemm_4bit_inference_naive_bf16", "cquantize_blockwise_bf16_nf4"):
    getattr(lib._lib, kernel)

# The export extra's llama.cpp (its CPU build, which loads without a GPU) and kubetune itself.
import xllamacpp  # noqa: E402, F401

import kubetune.trainer.cli  # noqa: E402, F401

print("torch", torch.__version__, "cuda", torch.version.cuda, "bitsandbytes", bitsandbytes.__version__, lib._lib._name)
