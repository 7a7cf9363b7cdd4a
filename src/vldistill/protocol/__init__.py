"""The papers' evaluation protocol (tasks x conditions x methods x seeds) and its report."""
