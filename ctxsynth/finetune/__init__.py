"""Stage finetune: LoRA / QLoRA / full fine-tuning of the base model on the mix, loss on answer tokens only."""
