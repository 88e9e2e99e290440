"""What a Hugging Face model directory holds: config, decoder, safetensors weights, tokenizer."""
