# The Triton interpreter must be switched on before triton is first imported: this file is loaded
# before any test module, so the `triton` backend runs the real kernels on CPU tensors.
import os

os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
os.environ["KERNELS_POISON"] = "1"  # outputs start as NaN: an element a kernel forgets stays NaN
