"""k5tune: LoRA training for the Kandinsky 5.0 Video models."""

import logging

__version__ = "0.1.0"


def _silence(logger: str, message: str) -> None:
    """Drop one known-harmless library log line (matched by a fragment of its text)."""
    logging.getLogger(logger).addFilter(lambda record: message not in record.getMessage())


# diffusers 0.42 looks for torchao tensor classes that newer torchao moved, and warns on every import
# when torchao (the optional `quant` extra) is installed. It concerns loading checkpoints saved
# quantised, which k5tune never does (it quantises after loading).
_silence("diffusers.quantizers.torchao.torchao_quantizer", "Unable to import `torchao` Tensor objects")
# torchao registers its enums with torch.compile the way older torch wanted; torch 2.13 logs a
# deprecation line for each one on import.
_silence("torch.utils._pytree", "is an Enum subclass and is now natively supported")
# Selective checkpointing inside a compiled block (k5tune.train.speed) warns that in-place ops would be
# unsafe there; k5tune's compiled blocks have none (their LoRA product is out of place when compiled).
_silence("torch._higher_order_ops.wrap", "Detected that context_fn is passed to torch.utils.checkpoint")
