"""The export on its own: raw DNA through AutoTokenizer and sentence-transformers, without DNAVec.

Token ids against a plain-Python reference of the tokenization rule (hypothesis), the options,
errors, the plain (no trust_remote_code) path, sentence-transformers against `dnavec embed`, the
model card's code, and all of it again in a child process where dnavec_jax cannot be imported.
"""

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
sentence_transformers = pytest.importorskip("sentence_transformers")

from test_hf_export import chr22_windows, small_setup  # noqa: E402

from dnavec_jax.export import export_to_hf  # noqa: E402
from dnavec_jax.tokenization import CLS_ID, SEP_ID, KmerTokenizer, record_seed  # noqa: E402
from dnavec_jax.tools import embed, loaded_model  # noqa: E402

DNA = ["GATCCCACGTTAGCAGGTACCAGTTTGACCA", "acgtTTGACcagtAAAGGGCTAGCTAcgatcgatcggatc", "TTTTAAAACCCCGGGGACGTACGT" * 2]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    tokenizer, config, params = small_setup()
    out = export_to_hf(params, config, tokenizer, tmp_path_factory.mktemp("remote") / "export",
                                 train_config={"data": {"prep": {"k_min": 3, "k_max": 5, "seq_length": 128}}})
    return out, tokenizer


@pytest.fixture(scope="module")
def hf_tokenizer(export):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(export[0]), trust_remote_code=True)


def reference_ids(tokenizer: KmerTokenizer, dna: str, seed, k=None) -> list[int]:
    """The rule, written out per position: no vectorised code of the project, only token_to_id."""
    upper = dna.upper()
    ks = (None if k is not None else
          np.random.default_rng(seed).integers(tokenizer.k_min, tokenizer.k_max + 1,
                                               size=max(0, len(dna) - tokenizer.k_min + 1)))
    ids = []
    for run in re.finditer(r"[ACGT]+", upper):
        for i in range(run.start(), run.end() - (k or tokenizer.k_min) + 1):  # where a shortest k-mer fits
            length = k if k is not None else min(int(ks[i]), run.end() - i)  # k clipped at the run's end
            ids.append(tokenizer.token_to_id(upper[i:i + length]))
    return ids


def seed_of(dna: str, seed: int = 0, draw: int = 0):
    return record_seed(seed, draw, np.frombuffer(dna.encode(), np.uint8))


dna_text = st.text(alphabet="ACGTacgtNnRYW", min_size=0, max_size=150).filter(
    lambda s: re.search(r"[ACGTacgt]{3}", s) is not None)


@settings(max_examples=60, deadline=None)
@given(dna=dna_text, seed=st.integers(0, 2**31), draw=st.integers(0, 5), k=st.sampled_from([None, 3, 4, 5]))
def test_raw_dna_ids_follow_the_rule(hf_tokenizer, export, dna, seed, draw, k):
    _, tokenizer = export
    if k is not None and not re.search(f"[ACGTacgt]{{{k}}}", dna):
        with pytest.raises(ValueError, match="no k-mer"):
            hf_tokenizer(dna, k=k)
        return
    ids = hf_tokenizer(dna, seed=seed, draw=draw, k=k)["input_ids"]
    assert ids == [CLS_ID, *reference_ids(tokenizer, dna, seed_of(dna, seed, draw), k), SEP_ID]
    # What `dnavec embed` tokenizes (its contigs, in order) is the same.
    contigs = loaded_model.tokenize_sequence(tokenizer, dna, seed_of(dna, seed, draw), k=k)
    assert ids[1:-1] == [int(i) for contig in contigs for i in contig.ids]


def test_one_run_equals_kmer_tokenizer_encode(hf_tokenizer, export, chr22_fasta):
    _, tokenizer = export
    for window in chr22_windows(chr22_fasta, [40, 126, 300]):
        for seed, draw in ((0, 0), (5, 0), (0, 3)):
            expected = tokenizer.encode(window, seed=seed_of(window, seed, draw)).tolist()
            assert hf_tokenizer(window, k=None, seed=seed, draw=draw)["input_ids"] == [CLS_ID, *expected, SEP_ID]
            # Soft-masked (lower-case) bases are the same bases, and the seed comes from the upper-cased text.
            assert hf_tokenizer(window.lower(), k=None, seed=seed, draw=draw)["input_ids"][1:-1] == expected
        for k in (3, 4, 5):
            assert hf_tokenizer(window, k=k)["input_ids"][1:-1] == tokenizer.encode(window, k=k).tolist()


def test_options_and_determinism(export, hf_tokenizer):
    from transformers import AutoTokenizer

    out, tokenizer = export
    dna = DNA[1]
    # The default: every 4-mer (the middle of k 3..5, as `dnavec embed`); no seed involved.
    assert hf_tokenizer.k == 4
    default = hf_tokenizer(dna)["input_ids"]
    assert default == [CLS_ID, *reference_ids(tokenizer, dna, None, k=4), SEP_ID]
    assert hf_tokenizer(dna, seed=3, draw=2)["input_ids"] == default
    # Random k: the same call gives the same ids, whatever else is in the batch; seed and draw change them.
    first = hf_tokenizer(dna, k=None)["input_ids"]
    assert hf_tokenizer(dna, k=None)["input_ids"] == first != default
    assert hf_tokenizer([DNA[0], dna, DNA[2]], k=None)["input_ids"][1] == first
    assert hf_tokenizer(dna, k=None, draw=1)["input_ids"] != first != hf_tokenizer(dna, k=None, seed=1)["input_ids"]
    trained_like = AutoTokenizer.from_pretrained(str(out), trust_remote_code=True, k=None)
    assert trained_like.k is None and trained_like(dna)["input_ids"] == first
    hf_tokenizer.k = 3
    try:
        assert hf_tokenizer(dna)["input_ids"] == [CLS_ID, *tokenizer.encode(dna, k=3).tolist(), SEP_ID]
    finally:
        hf_tokenizer.k = 4
    with pytest.raises(ValueError, match=r"k=6 is outside this model's k range 3..5"):
        hf_tokenizer(dna, k=6)
    # Pairs, padding and truncation are transformers' own, on these ids.
    pair = hf_tokenizer("ACGTA", "TTTTT", k=3)
    assert pair["input_ids"] == [2, 5 + 6, 5 + 27, 5 + 44, 3, 5 + 63, 5 + 63, 5 + 63, 3]
    assert pair["token_type_ids"] == [0] * 5 + [1] * 4
    batch = hf_tokenizer(["ACGTACGT", "ACGTACGTACGTACGTACGT"], padding=True, return_tensors="pt")
    assert batch["attention_mask"].sum(1).tolist() == [7, 19] and batch["input_ids"][0, -1] == 0
    long = hf_tokenizer("ACGT" * 100, truncation=True)["input_ids"]
    assert len(long) == 128 and long[-1] == SEP_ID


def test_kmer_text_and_decode(export, hf_tokenizer):
    _, tokenizer = export
    dna = DNA[0]
    text = tokenizer.kmer_text(dna, seed=4)
    assert hf_tokenizer(text)["input_ids"] == [CLS_ID, *tokenizer.encode(dna, seed=4).tolist(), SEP_ID]
    masked = text.split()
    masked[3] = "[MASK]"
    assert hf_tokenizer(" ".join(masked))["input_ids"][4] == 4
    ids = hf_tokenizer(dna)["input_ids"]
    assert hf_tokenizer(hf_tokenizer.decode(ids, skip_special_tokens=True))["input_ids"] == ids
    assert hf_tokenizer.convert_ids_to_tokens(ids)[0] == "[CLS]"


@pytest.mark.parametrize("text, message", [
    ("ACGTXACGT", r"'ACGTXACGT' is not DNA: 'X' at position 4"),
    ("ACGU", r"not DNA: 'U' at position 3"),
    ("ACG acg TTTT", r"not DNA: ' ' at position 3 .*nor is it k-mer text.*'acg' is not"),
    ("GATTA GATTACAGATTACA", r"not DNA: ' ' at position 5 .*'GATTACAGATTACA' is not"),
    ("ACGTé", r"not DNA: 'é' at position 4"),
    ("ACGNNNGT", r"no k-mer in 'ACGNNNGT': no run of 4 or more A/C/G/T bases"),  # the default k=4
])
def test_bad_input_is_an_error_never_unk(hf_tokenizer, text, message):
    with pytest.raises(ValueError, match=message):
        hf_tokenizer(text)


def test_without_trust_remote_code_loading_fails_with_the_instruction(export):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    out, _ = export
    for load in (AutoTokenizer.from_pretrained, PreTrainedTokenizerFast.from_pretrained):
        with pytest.raises(Exception, match=r"not a tokenizer: .*trust_remote_code=True"):
            load(str(out))
    with pytest.raises(ValueError, match=r"(?s)sentence_dnavec.DNAVecTransformer.*trust_remote_code=True"):
        SentenceTransformer(str(out))


def test_save_pretrained_round_trip(hf_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    hf_tokenizer.save_pretrained(tmp_path / "saved")
    again = AutoTokenizer.from_pretrained(str(tmp_path / "saved"), trust_remote_code=True)
    assert again(DNA)["input_ids"] == hf_tokenizer(DNA)["input_ids"]


def test_sentence_transformers_equals_embed_mean(export, chr22_fasta, tmp_path):
    """One vector per sequence; `dnavec embed`'s mean for one-run sequences that fit one window."""
    from sentence_transformers import SentenceTransformer

    out, tokenizer = export
    model = SentenceTransformer(str(out), trust_remote_code=True)
    assert type(model[1]).__name__ == "KmerMeanPooling" and model.get_embedding_dimension() == 64
    sequences = [*chr22_windows(chr22_fasta, [40, 128, 90]), DNA[1]]  # 128 bases: 125 4-mers, 126 random-k tokens
    vectors = model.encode(sequences)
    loaded = loaded_model.load_model(out)
    embedded = embed.embed_sequences(loaded, sequences)
    assert vectors.shape == (4, 64) and (embedded["num_windows"] == 1).all()
    np.testing.assert_allclose(vectors, embedded["mean"], atol=1e-5, rtol=0)
    # Random k through the tokenizer's attributes: draws 0 and 1 averaged are embed's two tokenizations.
    model.tokenizer.k = None
    try:
        draws = []
        for draw in (0, 1):
            model.tokenizer.draw = draw
            draws.append(model.encode(sequences))
    finally:
        model.tokenizer.k, model.tokenizer.draw = 4, 0
    embedded = embed.embed_sequences(loaded, sequences, k="random", num_tokenizations=2)
    np.testing.assert_allclose((draws[0] + draws[1]) / 2, embedded["mean"], atol=1e-5, rtol=0)
    assert np.abs(draws[0] - vectors).max() > 1e-3
    # A longer sequence is truncated to its first 126 tokens: the mean of what the first window sees.
    long = chr22_windows(chr22_fasta, [400])[0]
    ids = tokenizer.encode(long, k=4).tolist()[:126]
    with torch.no_grad():
        states = model[0].auto_model(input_ids=torch.tensor([[CLS_ID, *ids, SEP_ID]])).last_hidden_state
    np.testing.assert_allclose(model.encode([long])[0], states[0, 1:-1].mean(0).numpy(), atol=1e-5, rtol=0)
    # Saved again by sentence-transformers (e.g. after fine-tuning), it loads and gives the same vectors.
    model.save(str(tmp_path / "resaved"))
    again = SentenceTransformer(str(tmp_path / "resaved"), trust_remote_code=True)
    np.testing.assert_allclose(again.encode(sequences), vectors, atol=1e-6, rtol=0)


def card_snippets(out) -> list[str]:
    card = (out / "README.md").read_text()
    snippets = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(snippets) == 2 and all('model_id = "path/to/this/export"' in s for s in snippets)
    return [s.replace('model_id = "path/to/this/export"', f"model_id = {str(out)!r}") for s in snippets]


def test_model_card_code_runs_and_agrees(export):
    out, tokenizer = export
    with_transformers, with_sentence_transformers = ({}, {})
    first, second = card_snippets(out)
    exec(first, with_transformers)
    exec(second, with_sentence_transformers)
    vectors = with_transformers["embeddings"].numpy()
    assert vectors.shape == (2, 64)
    np.testing.assert_allclose(with_sentence_transformers["embeddings"], vectors, atol=1e-5, rtol=0)
    embedded = embed.embed_sequences(loaded_model.load_model(out), with_transformers["dna"][:1])
    np.testing.assert_allclose(vectors[:1], embedded["mean"], atol=1e-5, rtol=0)


CHILD = """
import json, sys

# As if not installed: `import` raises ModuleNotFoundError and importlib.util.find_spec returns None.
for name in ("dnavec_jax", "jax", "jaxlib", "flax", "tensorflow"):
    sys.modules[name] = None
try:
    import dnavec_jax
    raise SystemExit("dnavec_jax imported")
except ModuleNotFoundError:
    pass
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

out, dna = sys.argv[1], json.loads(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
vectors = SentenceTransformer(out, trust_remote_code=True).encode(dna)
blocked = [name for name, module in sys.modules.items() if module is not None
           and name.split(".")[0] in ("dnavec_jax", "jax", "jaxlib", "flax", "tensorflow")]
print(json.dumps({"ids": tokenizer(dna)["input_ids"], "fixed": tokenizer(dna, k=4)["input_ids"],
                  "vectors": vectors.tolist(), "loaded": blocked}))
"""


def run_child(out, tmp_path, python=sys.executable) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH",)}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONNOUSERSITE="1")
    result = subprocess.run([python, "-c", textwrap.dedent(CHILD), str(out), json.dumps(DNA)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_export_works_where_dnavec_cannot_be_imported(export, hf_tokenizer, tmp_path):
    out, _ = export
    child = run_child(out, tmp_path)
    assert child["loaded"] == []
    assert child["ids"] == hf_tokenizer(DNA)["input_ids"]
    assert child["fixed"] == hf_tokenizer(DNA, k=4)["input_ids"]
    embedded = embed.embed_sequences(loaded_model.load_model(out), DNA)
    np.testing.assert_allclose(np.array(child["vectors"]), embedded["mean"], atol=1e-5, rtol=0)
