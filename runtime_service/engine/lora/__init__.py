"""LoRA adapters: PEFT reading and validation, device slots, the manager the engine uses."""

from runtime_service.engine.lora.adapter import LoRAAdapter, read_adapter
from runtime_service.engine.lora.manager import AdapterInfo, AdapterState, LoRAManager

__all__ = ["AdapterInfo", "AdapterState", "LoRAAdapter", "LoRAManager", "read_adapter"]
