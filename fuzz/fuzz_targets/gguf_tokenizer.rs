//! Arbitrary bytes as a GGUF file, through the header parser and then the tokenizer built from
//! its `tokenizer.ggml.*` metadata: an error or a tokenizer that encodes and decodes — never a
//! panic (a per-token array longer than the token list once indexed out of bounds) or an
//! allocation the bytes do not pay for.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.gguf");
    let Ok(h) = kiln::formats::gguf::parse_header(data, path) else { return };
    if let Ok(tok) = kiln::data::tokenizer::TextTokenizer::from_gguf_metadata(&h.metadata, path) {
        for s in [&tok.bos, &tok.eos, &tok.pad].into_iter().flatten() {
            assert!((s.id as usize) < tok.vocab_size(), "special id {} outside the vocabulary", s.id);
        }
        if let Ok(e) = tok.encode("hi there <|end|>") {
            let _ = tok.decode(&e.ids);
        }
    }
});
