"""Phase 3: synthetic code documents written by a teacher LLM from top phase-2 seeds.

- :mod:`~snowjax.synth.seeds`: seed records (Parquet/JSONL, top N by score);
- :mod:`~snowjax.synth.prompts`: OSS-Instruct-style prompt templates, a seeded style per seed;
- :mod:`~snowjax.synth.client`: async OpenAI-compatible client with retries and backoff;
- :mod:`~snowjax.synth.store`: the append-only reply log that makes the job resumable;
- :mod:`~snowjax.synth.validate`: code extraction and the acceptance rules;
- :mod:`~snowjax.synth.job`: ``snowjax data synth``, tying them together.
"""
