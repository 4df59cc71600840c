//! Arbitrary bytes as a dataset file of each kind (JSONL, JSON array, CSV; the first byte picks
//! one) through the loader and validator: rows or a `file:line: field: reason` error, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let ext = ["jsonl", "json", "csv"][pick as usize % 3];
    let path = std::env::temp_dir().join(format!("kiln-fuzz-{}.{ext}", std::process::id()));
    if std::fs::write(&path, body).is_err() {
        return;
    }
    for skip_invalid in [false, true] {
        let opts = kiln::data::dataset::LoadOptions { skip_invalid, ..Default::default() };
        if let Err(e) = kiln::data::dataset::load_file(&path, &opts) {
            assert!(e.to_string().contains("kiln-fuzz-"), "errors name the file: {e}");
        }
    }
});
