"""The analysis tools behind `dnavec` (cli.py): each loads a trained model through loaded_model.

loaded_model (run directory or export -> params, tokenizer, windows), vectors, embed, tfidf,
attention, structure, predict and classify/. docs/outputs.md and docs/classify.md describe them.
"""
