"""lp: LLaMA Pro block expansion experiments on PyTorch Lightning + Hydra.

The modules at this level are the commands (``python -m lp.train``, ``lp.expand``,
``lp.eval``, ``lp.data``, ``lp.report``, ``lp.bench``, ``lp.families``) and the config
schemas they share (``lp.schemas``); the packages are the parts of the flow, each
importing only from those below it (``.importlinter``): ``reports``, ``training``,
``measure``, ``corpus``, ``base``, ``expansion``, ``core``.
"""
