"""On-device LoRA fine-tuning of BlockModels (PEFT adapters, memory options, subsets).

Heavy imports (torch, peft) happen in the submodules; import what you need from them:
``finetune.config``, ``finetune.lora``, ``finetune.train``, ``finetune.adapter``,
``finetune.subset``, ``finetune.run`` (the one-call API the CLI wraps).
"""
