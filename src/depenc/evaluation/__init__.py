"""Evaluations of a model on data, as plain functions: the evaluation callbacks (:mod:`depenc.callbacks`)
decide when to call them and where their results go; the command line (:mod:`depenc.evaluate`) calls
the same ones.

* :mod:`~depenc.evaluation.alignment`: UUAS / left-arc attachment against gold trees (DESIGN 4.2);
* :mod:`~depenc.evaluation.agreement`: subject-verb agreement minimal pairs (4.4);
* :mod:`~depenc.evaluation.generation`: samples (``Transformer.generate``) and their statistics (4.3);
* :mod:`~depenc.evaluation.likelihood`: perplexity, bits per byte, sentence log-probabilities;
* :mod:`~depenc.evaluation.excess`: excess loss over the synthetic grammar's exact optimum;
* :mod:`~depenc.evaluation.base`, :mod:`~depenc.evaluation.io`, :mod:`~depenc.evaluation.memory`: the
  model helpers, JSON output and peak memory they share.

Nothing is imported here, so importing one module stays cheap.
"""
