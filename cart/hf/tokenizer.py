"""The project's SentencePiece tokenizer as a Hugging Face fast tokenizer (a `tokenizers` pipeline
saved as tokenizer.json, loaded by `AutoTokenizer.from_pretrained` with no sentencepiece needed).

SentencePiece BPE, reproduced step by step: the normaliser prepends the dummy-prefix "▁" (when
the model has add_dummy_prefix) and writes spaces as "▁"; the pre-tokeniser cuts the text where
SentencePiece cuts it into words before merging (at each run of "▁" when whitespace-only pieces
are allowed, else at each "▁"); BPE merges pieces in the order of their SentencePiece scores
(transformers' own `generate_merges`), falling back to bytes; nothing is added around the ids
(the project trains without BOS: documents are separated by EOS). `to_hf_tokenizer` checks the
result against SentencePiece on probe texts and refuses a tokenizer that encodes any differently.
"""
from __future__ import annotations

from pathlib import Path

PROBE_TEXTS = ("Hello world", " Hello", "  two  spaces", "x  1", "x 12", " = Robert Boulter = ",
               "line\nbreak\n\nx", "\tTab and trailing ", "digits 12345 and 3.14", "émoji 😀 ü ß 中文",
               "a</s>b<s>c<unk>", "", " ", "   ")


def to_hf_tokenizer(model_file: str | Path, *, model_max_length: int, prefix_token_id: int,
                    probe_texts: tuple[str, ...] = ()):
    """A PreTrainedTokenizerFast encoding exactly as the SentencePiece model at model_file.
    prefix_token_id becomes the BOS token (lm-eval's prefix for empty contexts and rolling windows);
    EOS (the document separator) is also the pad token."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.tokenization_utils_base import generate_merges

    data = Path(model_file).read_bytes()
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(data)
    norm, trainer = proto.normalizer_spec, proto.trainer_spec
    unsupported = []
    if trainer.model_type != trainer.BPE:
        unsupported.append(f"model_type {trainer.ModelType.Name(trainer.model_type)} (only BPE)")
    if norm.name not in ("identity", "") or norm.precompiled_charsmap:
        unsupported.append(f"normalization {norm.name!r} (only identity)")
    if norm.remove_extra_whitespaces:
        unsupported.append("remove_extra_whitespaces")
    if trainer.treat_whitespace_as_suffix:
        unsupported.append("treat_whitespace_as_suffix")
    if unsupported:
        raise ValueError(f"{model_file}: cannot export this SentencePiece model to a Hugging Face tokenizer: "
                         f"{', '.join(unsupported)} not supported")

    sp = spm.SentencePieceProcessor(model_proto=data)
    special = {i for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i)}
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size()) if i not in special}
    merges = generate_merges(vocab, scores, skip_tokens={sp.id_to_piece(i) for i in special})
    unk = sp.id_to_piece(sp.unk_id())
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    prefix = [normalizers.Prepend("▁")] if norm.add_dummy_prefix else []
    backend.normalizer = normalizers.Sequence(prefix + [normalizers.Replace(" ", "▁")])
    word_start = Regex("▁+") if trainer.allow_whitespace_only_pieces else "▁"
    backend.pre_tokenizer = pre_tokenizers.Split(word_start, behavior="merged_with_next")
    strip = [decoders.Strip(" ", 1, 0)] if norm.add_dummy_prefix else []
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         *strip])

    eos = sp.id_to_piece(sp.eos_id())
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=unk, eos_token=eos, pad_token=eos,
        bos_token=sp.id_to_piece(prefix_token_id), model_max_length=model_max_length,
        padding_side="left",  # batched generation continues every row from its last token
        split_special_tokens=True,  # "</s>" in text is text, as SentencePiece reads it
        clean_up_tokenization_spaces=False)
    for text in PROBE_TEXTS + tuple(probe_texts):
        want, got = sp.encode(text), tok.encode(text)
        if got != want or tok.decode(got) != sp.decode(want):
            raise ValueError(f"{model_file}: the Hugging Face tokenizer does not reproduce SentencePiece on "
                             f"{text[:60]!r}: {got[:12]} vs {want[:12]}")
    return tok
