"""k5tune: LoRA training for the Kandinsky 5.0 Video models."""

import logging

__version__ = "0.1.0"


def _silence(logger: str, message: str, *also: str) -> None:
    """Drop one known-harmless library log line (matched by fragments of its text, all of them)."""
    fragments = (message, *also)
    logging.getLogger(logger).addFilter(lambda record: not all(f in record.getMessage() for f in fragments))


# diffusers 0.42 looks for torchao tensor classes that newer torchao moved, and warns on every import
# when torchao (the optional `quant` extra) is installed. It concerns loading checkpoints saved
# quantised, which k5tune never does (it quantises after loading).
_silence("diffusers.quantizers.torchao.torchao_quantizer", "Unable to import `torchao` Tensor objects")
# transformers and diffusers import torchao (the `quant` extra) whether or not quantisation is asked for,
# and torchao logs each optional kernel library that does not load on this machine: MX-fp8 (Blackwell
# GPUs) and the CUTLASS sm90a kernels. k5tune's int8/fp8 weight-only quantisation uses neither; any
# other library that fails to load is still reported.
_silence("torchao", "Failed to load", "/_C_mxfp8.")
_silence("torchao", "Failed to load", "/_C_cutlass_90a.")
# torchao registers its enums with torch.compile the way older torch wanted; torch 2.13 logs a
# deprecation line for each one on import.
_silence("torch.utils._pytree", "is an Enum subclass and is now natively supported")
# Selective checkpointing inside a compiled block (k5tune.train.speed) warns that in-place ops would be
# unsafe there; k5tune's compiled blocks have none (their LoRA product is out of place when compiled).
_silence("torch._higher_order_ops.wrap", "Detected that context_fn is passed to torch.utils.checkpoint")
