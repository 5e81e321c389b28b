"""The soak benchmark (issue 16): ``python -m benchmarks.soak``; see ``benchmarks/README.md``.

- :mod:`benchmarks.soak.stack`: the soak's own PostgreSQL and Redis (AOF), the Procfile's worker and
  beat, the faults, and the clean-up;
- :mod:`benchmarks.soak.driver`: a load-driver process (``record_turns`` at a fixed rate);
- :mod:`benchmarks.soak.sampler`: the once-a-second samples;
- :mod:`benchmarks.soak.run`: the run, the exactness checks, the figures and the PASS/FAIL lines.
"""
