"""Constitutional AI (Bai et al., 2022) as two stages of the chain, inference only.

- ``constitutional``: the model answers red-team prompts, critiques its answers against sampled principles of a
  written constitution and revises them; the final revisions are SFT data (``sft.jsonl``).
- ``ai_feedback``: the model samples two answers per prompt and judges which is better under a principle (the
  probabilities of "(A)" and "(B)", both orders averaged); the labels are preference data (``pairs.jsonl``).
"""
