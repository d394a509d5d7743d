"""The shared core that every recipe builds on: registries and typed options (``registry``, ``options``,
``method_options``), one errors module (``errors``), the recipe interface (``recipe``), advantage estimators
(``advantages``) and losses (``losses``), and the run machinery both backends share: the run driver and resume
(``resume``, ``record``, ``checkpoint``), the training loop (``loop``), the one update loop (``update``) with its
row dealing (``share``), the parallel layer (``parallel``, ``sharding``, ``zero``), trainable weights
(``weights``), monitors, trackers and timing. Nothing here imports ``flowrl.image`` or ``flowrl.text``."""
