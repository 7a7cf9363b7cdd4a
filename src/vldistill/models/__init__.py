"""Students (fusion encoder, dual encoder) and frozen teachers, built on Hugging Face transformers."""
