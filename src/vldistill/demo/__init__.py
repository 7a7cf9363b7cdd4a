"""The embedded demo: its own small CLIP teacher, its pre-trained student, the run end to end."""
