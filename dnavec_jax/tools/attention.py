"""Where the model's attention goes, per layer and head (`dnavec attention`): shares, heat maps, bertviz.

Windows are drawn at random (seeded, one streaming pass) from the FASTA's data-prep documents
(tfidf.genome_documents), tokenized as the model's training examples. The model runs with its
attention probabilities written out (model.apply_with_attention); per layer, head and k-mer query
the attention mass on each key category (cls, sep, kmer_<k_min>, kmer_longer, top_tfidf, self,
overlap) is averaged and set against uniform attention. docs/outputs.md ("Attention patterns") has
the categories, the outputs, the bertviz views (torch and bertviz, loaded lazily) and the cost.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure
from tqdm import tqdm

from dnavec_jax import export, files
from dnavec_jax import model as model_lib
from dnavec_jax.data import fasta
from dnavec_jax.data.settings import PrepSettings
from dnavec_jax.errors import DNAVecError
from dnavec_jax.tokenization import CLS_ID, PAD_ID, SEP_ID, KmerTokenizer
from dnavec_jax.tools import loaded_model, tfidf
from dnavec_jax.tools.settings import AttentionSettings

SHARES_CSV = "attention_shares.csv"
SUMMARY_JSON = "attention_summary.json"
HEAD_VIEW_HTML = "attention_head_view.html"
MODEL_VIEW_HTML = "attention_model_view.html"
CSV_COLUMNS = ("layer", "head", "category", "share", "uniform_share")
VIZ_INSTALL = 'pip install -e ".[viz]"'


def categories(k_min: int) -> tuple[str, ...]:
    return ("cls", "sep", f"kmer_{k_min}", "kmer_longer", "top_tfidf", "self", "overlap")


def heatmap_name(category: str) -> str:
    return f"attention_{category}.png"


# ---- shares: pure array functions (jax.numpy; numpy inputs work too) ----------------
def category_masks(input_ids, input_mask, kmer_lengths, top_table, k_min: int, starts=None):
    """(batch, categories, queries, keys) float32 masks: 1 where the key is in the category for that query.

    Args:
      input_ids, input_mask: (batch, length) ids and 1/0 real-token mask.
      kmer_lengths: (vocab_size,) k of each id, 0 for special tokens (KmerTokenizer.kmer_lengths()).
      top_table: (vocab_size,) bool, True for the top tf-idf k-mers.
      k_min: the shortest k-mer length.
      starts: (batch, length) first base of each token; default position - 1 (one token per base).
    Only real keys are ever in a category; categories are in the order of categories(k_min).
    """
    ids = jnp.asarray(input_ids)
    real = jnp.asarray(input_mask).astype(bool)
    lengths = jnp.asarray(kmer_lengths)[ids]
    is_kmer = (lengths > 0) & real
    if starts is None:
        starts = jnp.broadcast_to(jnp.arange(ids.shape[1]) - 1, ids.shape)
    starts = jnp.asarray(starts)
    ends = starts + lengths
    per_key = jnp.stack([
        (ids == CLS_ID) & real,
        (ids == SEP_ID) & real,
        is_kmer & (lengths == k_min),
        is_kmer & (lengths > k_min),
        is_kmer & jnp.asarray(top_table)[ids],
    ], axis=1)  # (batch, 5, keys)
    length = ids.shape[1]
    per_key = jnp.broadcast_to(per_key[:, :, None, :], (ids.shape[0], per_key.shape[1], length, length))
    both = is_kmer[:, :, None] & is_kmer[:, None, :]  # (batch, queries, keys)
    self_mask = both & jnp.eye(length, dtype=bool)[None]
    overlap = both & (starts[:, None, :] < ends[:, :, None]) & (starts[:, :, None] < ends[:, None, :])
    return jnp.concatenate([per_key, self_mask[:, None], overlap[:, None]], axis=1).astype(jnp.float32)


def query_weights(input_ids, input_mask, kmer_lengths):
    """(batch, queries) 1.0 for the queries that count: real k-mer tokens."""
    return ((jnp.asarray(kmer_lengths)[jnp.asarray(input_ids)] > 0)
            & jnp.asarray(input_mask).astype(bool)).astype(jnp.float32)


def share_sums(probs, masks, weights):
    """Per (layer, head, category): the sum over counted queries of the attention mass on the category.

    probs (layers, batch, heads, queries, keys); masks (batch, categories, queries, keys); weights (batch, queries).
    """
    return jnp.einsum("lbhqk,bcqk,bq->lhc", probs, masks, weights, preferred_element_type=jnp.float32)


def uniform_sums(masks, input_mask, weights):
    """Per category: the sum over counted queries of the category's fraction of the real keys."""
    num_keys = jnp.maximum(jnp.asarray(input_mask).astype(jnp.float32).sum(axis=1), 1.0)  # (batch,); 0 for filler rows
    fraction = masks.sum(axis=3) / num_keys[:, None, None]  # (batch, categories, queries)
    return jnp.einsum("bcq,bq->c", fraction, weights)


@dataclasses.dataclass
class AttentionShares:
    categories: tuple[str, ...]
    share: np.ndarray  # (layers, heads, categories) mean share over the counted queries
    uniform: np.ndarray  # (categories,) mean uniform share
    num_sequences: int
    num_queries: int

    def rows(self) -> list[dict]:
        layers, heads, _ = self.share.shape
        return [{"layer": layer, "head": head, "category": name, "share": float(self.share[layer, head, c]),
                 "uniform_share": float(self.uniform[c])}
                for c, name in enumerate(self.categories) for layer in range(layers) for head in range(heads)]


class ShareCounter:
    """Runs the model with attention on batches of windows over all devices (loaded_model.DataParallel) and
    accumulates the share sums (one jit per shape); only the sums leave the devices."""

    def __init__(self, config, params, tokenizer: KmerTokenizer, top_ids: Sequence[int],
                 devices: Sequence[jax.Device] | None = None):
        self.config = dataclasses.replace(config, dtype="float32")  # analysis numbers in float32
        self.parallel = loaded_model.DataParallel(devices)
        self.params = self.parallel.put_params(params)
        self.k_min = tokenizer.k_min
        self.categories = categories(tokenizer.k_min)
        self.kmer_lengths = jax.device_put(tokenizer.kmer_lengths(), self.parallel.replicated)
        top_table = np.zeros(tokenizer.vocab_size, dtype=bool)
        top_table[np.asarray(top_ids, dtype=np.int64)] = True
        self.top_table = jax.device_put(top_table, self.parallel.replicated)
        num_layers, num_heads = self.config.num_layers, self.config.num_heads
        self.sums = np.zeros((num_layers, num_heads, len(self.categories)))
        self.uniform_sums = np.zeros(len(self.categories))
        self.num_queries = 0
        self.num_sequences = 0

        # The batch is split over the devices; the sums come back replicated (XLA adds the devices' parts).
        @functools.partial(jax.jit, static_argnums=(0,), out_shardings=self.parallel.replicated,
                           compiler_options=loaded_model.compiler_options())
        def batch_sums(k_min, params, ids, mask, kmer_lengths, top_table):
            _, probs = model_lib.apply_with_attention(self.config, params, ids, mask)
            masks = category_masks(ids, mask, kmer_lengths, top_table, k_min)
            weights = query_weights(ids, mask, kmer_lengths)
            return share_sums(probs, masks, weights), uniform_sums(masks, mask, weights), weights.sum()

        self._batch_sums = batch_sums

    def add(self, input_ids: np.ndarray, input_mask: np.ndarray) -> None:
        """A batch of windows ([CLS] k-mers [SEP], padded); all-padding rows count for nothing. Padded with such
        rows to a multiple of the device count."""
        rows = self.parallel.rows(len(input_ids))
        pad = ((0, rows - len(input_ids)), (0, 0))
        ids, mask = np.pad(input_ids.astype(np.int32), pad), np.pad(input_mask.astype(np.int32), pad)
        sums, uniform, queries = self.parallel.to_host(self._batch_sums(
            self.k_min, self.params, *self.parallel.put_batch(ids, mask), self.kmer_lengths, self.top_table))
        self.sums += np.asarray(sums, np.float64)
        self.uniform_sums += np.asarray(uniform, np.float64)
        self.num_queries += int(round(float(queries)))
        self.num_sequences += int((input_mask.sum(axis=1) > 0).sum())

    def result(self) -> AttentionShares:
        count = max(self.num_queries, 1)
        return AttentionShares(self.categories, self.sums / count, self.uniform_sums / count,
                               self.num_sequences, self.num_queries)


# ---- windows ---------------------------------------------------------------------
def sample_documents(settings: PrepSettings, num: int, seed: int, progress: bool = False) -> np.ndarray:
    """`num` documents drawn uniformly without replacement from all documents of the FASTA (fewer if there
    are fewer), in one streaming pass: each document gets a seeded random key and the `num` smallest are kept."""
    rng = np.random.default_rng(seed)
    kept_keys = np.zeros(0)
    kept = np.zeros((0, settings.tokens_per_example), np.int32)
    with tempfile.TemporaryDirectory(prefix="dnavec_attention_") as work_dir:
        genome = fasta.open_genome(settings.fasta, Path(work_dir), settings.chromosomes)
        sources, records = genome.sources, genome.records
        with tqdm(total=sum(record.length for record in records), unit="bp", unit_scale=True,
                  desc="attention: draw windows", disable=not progress) as bar:
            for docs, bases in tfidf.genome_documents(settings, sources, records):
                keys = np.concatenate([kept_keys, rng.random(len(docs))])
                pool = np.concatenate([kept, docs])
                order = np.argsort(keys, kind="stable")[:num]
                kept_keys, kept = keys[order], pool[order]
                bar.update(bases)
    return kept


def first_document(settings: PrepSettings, record: str) -> np.ndarray:
    """The first document (k-mer ids, [PAD]-padded) of one record."""
    settings = settings.replace(chromosomes=record)
    with tempfile.TemporaryDirectory(prefix="dnavec_attention_") as work_dir:
        genome = fasta.open_genome(settings.fasta, Path(work_dir), settings.chromosomes)
        sources, records = genome.sources, genome.records
        for docs, _ in tfidf.genome_documents(settings, sources, records[:1]):
            if len(docs):
                return docs[0]
    raise DNAVecError(f"record {record!r} holds no contig of at least min_contig_length="
                      f"{settings.min_contig_length} A/C/G/T bases")


# ---- the top tf-idf k-mers ---------------------------------------------------------
def top_tfidf_ids(tokenizer: KmerTokenizer, top: int, tfidf_csv: str | None, settings: PrepSettings,
                  progress: bool = False) -> tuple[np.ndarray, str]:
    """Ids of the top-N tf-idf k-mers: the first N rows of a `dnavec tfidf` CSV, or computed on the FASTA."""
    if tfidf_csv:
        rows = tfidf.read_top_csv(tfidf_csv)[:top]
        ids = []
        for row in rows:
            try:
                ids.append(tokenizer.token_to_id(row["kmer"]))
            except ValueError:
                raise DNAVecError(
                    f"{tfidf_csv}: k-mer {row['kmer']!r} is not in the model's vocabulary "
                    f"(k {tokenizer.k_min}..{tokenizer.k_max}); run `dnavec tfidf` with the model's k range"
                ) from None
        return np.asarray(ids, np.int64), f"{tfidf_csv} (first {len(ids)} rows)"
    result = tfidf.genome_tfidf(settings.fasta, settings, progress)
    return tfidf.top_kmers(result.score, top), f"computed on --fasta ({result.num_documents:,} documents)"


# ---- outputs -------------------------------------------------------------------------
CATEGORY_TITLES = {
    "cls": "[CLS]", "sep": "[SEP]", "kmer_longer": "k-mers longer than k_min", "top_tfidf": "top tf-idf k-mers",
    "self": "the token itself", "overlap": "itself + overlapping k-mers",
}


def heatmap_png(share: np.ndarray, title: str, uniform: float) -> bytes:
    """PNG bytes of a layers x heads heat map of one category's share (matplotlib's Agg canvas, no pyplot)."""
    layers, heads = share.shape
    figure = Figure(figsize=(max(4.0, 0.6 * heads + 2.5), max(3.0, 0.45 * layers + 1.8)), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(share, cmap="viridis", aspect="auto", vmin=0.0, vmax=max(float(share.max()), uniform, 1e-6))
    figure.colorbar(image, ax=axes, label="share of attention")
    axes.set_xticks(range(heads))
    axes.set_yticks(range(layers))
    axes.set_xlabel("head")
    axes.set_ylabel("layer")
    axes.set_title(f"{title}\nuniform attention: {uniform:.3f}", fontsize=10)
    if layers * heads <= 160:
        threshold = 0.6 * image.norm.vmax
        for layer in range(layers):
            for head in range(heads):
                value = share[layer, head]
                axes.text(head, layer, f"{value:.3f}", ha="center", va="center", fontsize=7,
                          color="black" if value > threshold else "white")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def write_shares(shares: AttentionShares, output_dir: Path, k_min: int) -> list[str]:
    def write_csv(handle):
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(shares.rows())

    files.write_atomic(output_dir / SHARES_CSV, write_csv, binary=False)
    written = [SHARES_CSV]
    for index, category in enumerate(shares.categories):
        title = CATEGORY_TITLES.get(category, f"{k_min}-mers")
        png = heatmap_png(shares.share[:, :, index], f"attention to {title}", float(shares.uniform[index]))
        files.write_atomic(output_dir / heatmap_name(category), lambda handle, png=png: handle.write(png))
        written.append(heatmap_name(category))
    return written


def require_viz() -> None:
    """One-line error when the bertviz view's dependencies are missing."""
    missing = []
    for module in ("torch", "bertviz"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise DNAVecError(f"--html_record needs {' and '.join(missing)}, not installed: {VIZ_INSTALL}")


def hf_attentions(export_dir, input_ids: np.ndarray) -> np.ndarray:
    """transformers' attention probabilities (layers, heads, length, length) for one unpadded input."""
    import torch
    import transformers

    verbosity = transformers.logging.get_verbosity()
    progress = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # BertModel from a BertForMaskedLM export: head weights unused
    transformers.utils.logging.disable_progress_bar()
    try:
        model = transformers.BertModel.from_pretrained(str(export_dir), attn_implementation="eager").eval()
    finally:
        transformers.logging.set_verbosity(verbosity)
        if progress:
            transformers.utils.logging.enable_progress_bar()
    ids = torch.tensor(np.asarray(input_ids, np.int64)[None])
    with torch.no_grad():
        outputs = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True)
    return np.stack([layer[0].double().numpy() for layer in outputs.attentions])


def bertviz_html(attentions: np.ndarray, tokens: Sequence[str], title: str) -> tuple[str, str]:
    """(head view, model view) as standalone HTML pages (bertviz loads require.js and d3 from a CDN)."""
    import torch
    from bertviz import head_view, model_view

    rounded = tuple(torch.from_numpy(np.round(layer, 4))[None] for layer in attentions)  # smaller JSON
    pages = []
    for view in (head_view, model_view):
        body = view(rounded, list(tokens), html_action="return").data
        pages.append(f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n"
                     f"<body>\n<h3 style=\"font-family:sans-serif\">{title}</h3>\n{body}\n</body></html>\n")
    return pages[0], pages[1]


def write_bertviz(model_path: Path, loaded, doc: np.ndarray, html_tokens: int, output_dir: Path,
                  record: str) -> np.ndarray:
    """Renders the bertviz views of [CLS] + the first html_tokens k-mers of `doc` + [SEP]; returns the ids."""
    kmers = doc[doc != PAD_ID][:html_tokens]
    input_ids, _ = loaded_model.pack_windows([kmers], len(kmers) + 2)
    with tempfile.TemporaryDirectory(prefix="dnavec_attention_hf_") as tmp:
        export_dir = model_path
        if (model_path / "checkpoints").is_dir():  # a training run: export its checkpoint first
            export_dir, _ = export.export_checkpoint(model_path, Path(tmp) / "hf", step=loaded.step)
        attentions = hf_attentions(export_dir, input_ids[0])
    tokens = loaded.tokenizer.decode_ids(input_ids[0])
    title = f"{record}: first {len(kmers)} k-mers, {loaded.source}"
    head, model_view = bertviz_html(attentions, tokens, title)
    files.write_atomic(output_dir / HEAD_VIEW_HTML, lambda handle: handle.write(head), binary=False)
    files.write_atomic(output_dir / MODEL_VIEW_HTML, lambda handle: handle.write(model_view), binary=False)
    return input_ids[0]


# ---- the `dnavec attention` command ------------------------------------------------------
def prep_settings(loaded, settings: AttentionSettings) -> PrepSettings:
    """Data-prep settings that tokenize the FASTA as the model's training data was."""
    tokenizer = loaded.tokenizer
    max_tokens = loaded.max_tokens
    return PrepSettings.from_dict({
        "fasta": tuple(str(Path(path).absolute()) for path in settings.fasta), "chromosomes": settings.chromosomes,
        "k_min": tokenizer.k_min, "k_max": tokenizer.k_max,
        "k_weights": None if tokenizer.k_probs is None else tuple(float(p) for p in tokenizer.k_probs),
        "seq_length": max_tokens + 2, "seed": settings.seed, "min_contig_length": max(tokenizer.k_min, 64),
        "max_predictions": min(PrepSettings.max_predictions, max_tokens),
        "mask_span": min(PrepSettings.mask_span, max_tokens),
        "chunk_bases": max(PrepSettings.chunk_bases, max_tokens),
    })


def run_attention(settings: AttentionSettings) -> int:
    if settings.html_record:
        require_viz()
    fasta.check_fasta_paths(settings.fasta)
    started = time.perf_counter()
    loaded = loaded_model.load_model(settings.model, step=settings.step)
    k_min = loaded.tokenizer.k_min
    names = [SHARES_CSV, SUMMARY_JSON] + [heatmap_name(c) for c in categories(k_min)]
    if settings.html_record:
        names += [HEAD_VIEW_HTML, MODEL_VIEW_HTML]
    output_dir = files.check_outputs_in_dir(settings.output_dir, "--output_dir", names, settings.overwrite)
    prep = prep_settings(loaded, settings)
    html_doc = first_document(prep, settings.html_record) if settings.html_record else None  # a bad name fails early

    progress = sys.stderr.isatty()  # bars on a terminal only, as the other tools
    top_ids, top_source = top_tfidf_ids(loaded.tokenizer, settings.top_tfidf, settings.tfidf_csv, prep, progress)
    docs = sample_documents(prep, settings.num_sequences, settings.seed, progress)
    counter = ShareCounter(loaded.config, loaded.params, loaded.tokenizer, top_ids)
    for begin in tqdm(range(0, len(docs), settings.batch_size), desc="attention", unit="batch", disable=not progress):
        rows = [row[row != PAD_ID] for row in docs[begin : begin + settings.batch_size]]
        rows += [np.zeros(0, np.int32)] * (settings.batch_size - len(rows))  # fixed batch shape: one compile
        input_ids, input_mask = loaded_model.pack_windows(rows, loaded.window_length)
        input_mask[len(docs[begin : begin + settings.batch_size]):] = 0  # filler rows: no real token, no weight
        counter.add(input_ids, input_mask)
    shares = counter.result()
    written = write_shares(shares, output_dir, k_min)

    html_ids = None
    if html_doc is not None:
        html_ids = write_bertviz(Path(settings.model), loaded, html_doc, settings.html_tokens, output_dir,
                                 settings.html_record)
        written += [HEAD_VIEW_HTML, MODEL_VIEW_HTML]
    seconds = time.perf_counter() - started
    summary = {
        "model": loaded.source, "fasta": list(prep.fasta), "chromosomes": prep.chromosomes,
        "seed": settings.seed, "window_tokens": loaded.max_tokens, "num_sequences": shares.num_sequences,
        "num_queries": shares.num_queries, "layers": loaded.config.num_layers, "heads": loaded.config.num_heads,
        "categories": list(shares.categories), "uniform_share": dict(zip(shares.categories, shares.uniform.tolist())),
        "mean_share": dict(zip(shares.categories, shares.share.mean(axis=(0, 1)).tolist())),
        "top_tfidf": {"n": len(top_ids), "source": top_source, "kmers": loaded.tokenizer.decode_ids(top_ids)},
        "html_record": settings.html_record,
        "html_tokens": None if html_ids is None else loaded.tokenizer.decode_ids(html_ids),
        "seconds": round(seconds, 3),
    }
    files.write_atomic(output_dir / SUMMARY_JSON, lambda handle: handle.write(json.dumps(summary, indent=2) + "\n"),
                       binary=False)
    written.append(SUMMARY_JSON)
    print(f"attention of {loaded.source} over {shares.num_sequences} windows ({shares.num_queries:,} k-mer queries), "
          f"{loaded.config.num_layers} layers x {loaded.config.num_heads} heads; top tf-idf: {top_source}")
    print(f"{'category':<14} {'mean share':>10} {'min head':>9} {'max head':>9} {'uniform':>8}")
    for index, category in enumerate(shares.categories):
        values = shares.share[:, :, index]
        print(f"{category:<14} {values.mean():>10.4f} {values.min():>9.4f} {values.max():>9.4f} "
              f"{shares.uniform[index]:>8.4f}")
    print(f"wrote {', '.join(written)} to {output_dir} in {seconds:.1f} s")
    return 0
