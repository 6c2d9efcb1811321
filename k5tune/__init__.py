"""k5tune: LoRA training for the Kandinsky 5.0 Video models."""

import logging

__version__ = "0.1.0"


def _drop_torchao_serialization_notice(record: logging.LogRecord) -> bool:
    # diffusers 0.42 looks for torchao tensor classes that newer torchao moved, and warns on every
    # import when torchao (the optional `quant` extra) is installed. It concerns loading checkpoints
    # saved quantised, which k5tune never does (it quantises after loading), so the line is noise.
    return "Unable to import `torchao` Tensor objects" not in record.getMessage()


def _drop_enum_registration_notice(record: logging.LogRecord) -> bool:
    # torchao registers its enums with torch.compile the way older torch wanted; torch 2.13 logs a
    # deprecation line for each one on import (diffusers imports torchao whenever it is installed)
    return "is an Enum subclass and is now natively supported" not in record.getMessage()


logging.getLogger("diffusers.quantizers.torchao.torchao_quantizer").addFilter(_drop_torchao_serialization_notice)
logging.getLogger("torch.utils._pytree").addFilter(_drop_enum_registration_notice)
