"""Scenario harness: scripted situations (system prompt, conditions, scripted or simulated user turns) run
against any model, with parsers, verifiers and a yes/no judge rubric, rates with 95% intervals, a
content-hash cache and resumable runs. Builtin packs live in ``packs/`` (``alignkit scenario list``).

Modules: ``spec`` (the YAML schema and the plan), ``run`` (batched generation, the transcript cache),
``score`` (parsers, measures, the judge), ``stats`` (Wilson and bootstrap intervals), ``harness`` (a run end to
end), ``compare``, ``poison`` and ``defence`` (poisoned context and its defence data), ``command`` (the CLI).
"""
