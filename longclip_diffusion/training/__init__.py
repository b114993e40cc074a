"""Long-CLIP training: KPS + primary-component-matching fine-tuning, data, evaluation and export."""
