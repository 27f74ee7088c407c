"""Teacher cascade: ordinal cross-encoder teachers, their Triton export, backends,
cascade labeling in resumable shards, and the quality audit.

Modules import only from layers below their own:

1. ``ordinal`` (the ordinal head, probabilities, loss), ``stages`` (what a stage
   reads), ``agreement`` (grade agreement, condensed nDCG)
2. ``features`` (pair features, the feature teacher), then ``model`` (the
   cross-encoder teacher, stacked on a feature teacher or not, ``load_teacher``)
3. ``serving`` (a served teacher's batches), then ``backends`` (where stages run)
4. ``cascade`` (the escalation rule and running stages through a backend)
5. ``labeling``, then ``audit``, then ``export`` (the repository and its model card)
6. ``training`` (fits the stages, exports them, calibrates the escalation)
"""
