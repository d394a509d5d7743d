"""Trainers: the flow-GRPO recipe (``flow``), its sampler modes (``modes``), trainable weights
(``weights``), prompt sources (``data``) and the run driver that evaluates, logs and saves (``run``)."""
