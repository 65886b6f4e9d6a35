"""Report component: metrics.json and index.html from the Evaluators' TFMA outputs."""
