"""The training engine: build, loop, evaluate, checkpoint, the teacher cache, the plan."""
