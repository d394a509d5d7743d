"""The image recipe (``backend: flow``): flow-matching image models on every family (``models``), their
configuration (``config``), prompt data and the toy world, the recipe's steps (``trainer``, ``objectives``,
``run``), evaluation, generation, galleries, ``flowrl eval`` / ``gallery`` / ``profile`` / ``bench``.
It builds on ``flowrl.core`` and never imports ``flowrl.text``."""
