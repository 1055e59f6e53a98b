"""`dnavec classify`: k-mer baseline, probes and fine-tuning on train/dev/test tables (docs/classify.md).

settings (the flags' dataclasses, cheap to import), tables (reading and checking the CSVs, Task),
baseline (bag of k-mers + logistic regression), probes (pooled and per-token probes on frozen
features), finetuning (SequenceClassifier), report (metrics, the table, results.json and
predictions), motif (the planted-motif task), command (running the methods; `dnavec classify`).
"""
