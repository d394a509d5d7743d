"""The text recipe (``backend: text``): GRPO for causal language models on the same advantage, loss and update
core: its configuration (``config``, TRL names in ``trl``), prompt rows (``data``), the toy verifiable world
(``world``), the policy model (``model``), the recipe's steps (``trainer``, ``run``) and evaluation
(``eval_report``); its rewards are in the one reward registry (``flowrl.rewards``, ``rewards/text.py``). It builds
on ``flowrl.core`` and never imports ``flowrl.image``."""
