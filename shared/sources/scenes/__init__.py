"""A procedural, offline image world of coloured shapes, and the prompt source built on it.

world: the scene records, random scenes, rendering and captions.
prompts: questions about a scene with their ground-truth answers.
errors: wrong answers (`perturb` injects factual errors into a text).
source: ScenesSource, held-out pairs, pretraining corpora and the tokenizer corpus.

Import names from the module that defines them; this package re-exports nothing.
"""
