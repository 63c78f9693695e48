"""Data preparation, meta-learning, few-shot fine-tuning and checkpoints of the neural model.

The CLI calls `live_puppet.training.commands.register(subparsers)`; the neural engine reads
checkpoints with `live_puppet.training.checkpoint.load_checkpoint`.
"""
